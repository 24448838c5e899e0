"""Admission for work that does not run on the engine: a bounded pool of slots.

Previews decode a whole upload (a zipped series can expand to hundreds of images) on the
server's CPUs, beside the engine. They get their own few slots; one more is a 429 whose
Retry-After comes from how long recent previews took.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from medgem.server.http_errors import BusyError

MAX_RETRY_AFTER_S = 600


def retry_after(recent: Sequence[float], least: int, *, at_least: float = 0.0, times: float = 1.0) -> int:
    """Whole seconds to wait, for the preview slots and the engine queue alike: the mean of the
    ``recent`` durations (no less than ``at_least``) times ``times``, within ``[least, 600]``."""
    mean = sum(recent) / len(recent) if recent else 0.0
    return max(least, min(MAX_RETRY_AFTER_S, math.ceil(max(mean, at_least) * times)))


class Slots:
    """At most ``size`` holders at once; :meth:`admit` refuses the next with a BusyError.

    Args:
        size: holders at once.
        what: what the slots are for, in the error message ("previews").
        min_retry_after: the least Retry-After, in seconds.
    """

    def __init__(self, size: int, what: str, min_retry_after: int = 1) -> None:
        self.size = max(1, size)
        self.what = what
        self._min_retry_after = min_retry_after
        self._lock = threading.Lock()
        self._held = 0
        self._durations: deque[float] = deque(maxlen=16)

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a slot for the duration of the block.

        Raises:
            BusyError: every slot is held.
        """
        with self._lock:
            if self._held >= self.size:
                raise BusyError(f"the server is busy: {self._held} {self.what} are running",
                                self.retry_after(), code=f"{self.what}_busy")
            self._held += 1
        started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                self._durations.append(time.monotonic() - started)

    def retry_after(self) -> int:
        """Whole seconds until a slot likely frees: the mean of recent holds."""
        return retry_after(self._durations, self._min_retry_after)
