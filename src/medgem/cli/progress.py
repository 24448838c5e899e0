"""What a person waits for, shown while they wait: one stage line on stderr with the time spent.

``with Waiting("loading 4b-it"):`` draws ``⠋ loading 4b-it … 3 s`` and rubs it out when the
block ends; :func:`until_first` does the same while a stream has not yielded yet (the prompt
and images are being read). Engines name finer stages ("encoding image 1/2") by logging at
DEBUG to the ``medgem.progress`` logger, the one seam they share with no surface in
particular; a Waiting line shows the latest. A record logged with ``extra={"bar": True}`` says
a bar of its own draws now: the line steps aside until the next stage. Nothing is drawn unless the stream is a terminal,
so pipes, files and tests that read stderr see none of it. While the line is shown, the
libraries' own bars (transformers' weight loading, the hub's per-file downloads) are switched
off through their public switches, so one line says what is happening; downloads report their
files to the line through the ``medgem.progress`` logger (see medgem.resolve).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO, TypeVar

#: Engines log their stages here at DEBUG ("encoding image 1/2", "reading the prompt").
STAGES = logging.getLogger("medgem.progress")
FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
T = TypeVar("T")
_END = object()


class Waiting:
    """A stage line with a spinner and the elapsed seconds, redrawn on a terminal until closed.

    Args:
        label: what is happening ("loading medgem-demo-gemma3-270m").
        stream: where to draw (default stderr); nothing is drawn unless it is a terminal.
        interval: seconds between redraws.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, interval: float = 0.1) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.interval = interval
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frame = 0
        self._drawn = False
        self._thread: threading.Thread | None = None
        self._saved = (logging.NOTSET, True)
        self._bars_were_on = False
        self._aside = False
        self._handler = _StageHandler(self)

    def __enter__(self) -> Waiting:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._started = time.monotonic()
        self._saved = (STAGES.level, STAGES.propagate)
        self._bars_were_on = _library_bars(False)
        STAGES.addHandler(self._handler)
        STAGES.setLevel(logging.DEBUG)
        STAGES.propagate = False  # stages are for this line, not for anyone's log file
        self._draw()
        self._thread = threading.Thread(target=self._spin, name="medgem-progress", daemon=True)
        self._thread.start()

    def stage(self, label: str) -> None:
        """Show a new stage now (the time keeps counting from the start)."""
        self.label = label
        self._aside = False
        self._draw()

    def step_aside(self) -> None:
        """Rub the line out and draw nothing until the next stage: a bar has the line."""
        with self._lock:
            self._aside = True
            self._rub_out()

    def close(self) -> None:
        """Stop and rub the line out; safe to call twice."""
        if self._thread is None:
            return
        STAGES.removeHandler(self._handler)
        STAGES.setLevel(self._saved[0])
        STAGES.propagate = self._saved[1]
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._bars_were_on:
            _library_bars(True)
        with self._lock:
            self._rub_out()

    def _spin(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._stop.is_set() or self._aside:
                return
            elapsed = time.monotonic() - self._started
            frame = FRAMES[self._frame % len(FRAMES)]
            self._frame += 1
            self.stream.write(f"\r\x1b[K{frame} {self.label} … {elapsed:.0f} s")
            self.stream.flush()
            self._drawn = True

    def _rub_out(self) -> None:  # under the lock
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def until_first(items: Iterator[T], label: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged, with a :class:`Waiting` line until the first one arrives."""
    with Waiting(label, stream):
        first = next(items, _END)
    if first is _END:
        return
    yield first  # type: ignore[misc]
    yield from items


class _StageHandler(logging.Handler):
    def __init__(self, waiting: Waiting) -> None:
        super().__init__(logging.DEBUG)
        self.waiting = waiting

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "bar", False):
            self.waiting.step_aside()
        else:
            self.waiting.stage(record.getMessage())


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def _library_bars(on: bool) -> bool:
    """Switch the hub's and transformers' progress bars on or off; True if they were on.

    transformers reads the hub's switch when it is first imported, so switching the hub off
    before a load that imports transformers covers both; a transformers already imported is
    switched itself."""
    import huggingface_hub.utils as hub

    were_on = not hub.are_progress_bars_disabled()
    if on:
        hub.enable_progress_bars()
    else:
        hub.disable_progress_bars()
    loaded = sys.modules.get("transformers.utils.logging")
    if loaded is not None:
        loaded.enable_progress_bar() if on else loaded.disable_progress_bar()
    return were_on
