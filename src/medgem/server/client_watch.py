"""A client that leaves: noticed while its request waits or runs, so the engine stops work
nobody will read (the job's cancel event), and its inputs are not read for nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from starlette.requests import Request as HttpRequest

from medgem.errors import ClientDisconnectedError, InputCancelled
from medgem.request import Request
from medgem.server.queue import Job, JobItem


class ClientWatch:
    """Sets ``gone`` (the job's cancel event, which the engine checks) once the client
    disconnects. Enter it only after the body was read: it waits on the request's messages."""

    def __init__(self, http: HttpRequest) -> None:
        self.http = http
        self.gone = threading.Event()
        self._left = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> ClientWatch:
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _watch(self) -> None:
        while (await self.http.receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        self._left.set()

    async def next(self, job: Job) -> JobItem | None:
        """The job's next item, or None (and the job told to stop) once the client left."""
        getter = asyncio.ensure_future(job.out.get())
        left = asyncio.ensure_future(self._left.wait())
        done, _ = await asyncio.wait({getter, left}, return_when=asyncio.FIRST_COMPLETED)
        left.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        job.cancel.set()
        return None


def read_inputs(build: Callable[[threading.Event], Request], gone: threading.Event) -> Request:
    """``build(gone)`` (run in a thread), unless the client left before or while it ran."""
    check_present(gone, "before its inputs were read")
    try:
        request = build(gone)
    except InputCancelled:
        check_present(gone, "while its inputs were read")  # a 499, recorded as the client leaving
        raise
    check_present(gone, "while its inputs were read")
    return request


def check_present(gone: threading.Event, when: str) -> None:
    """Raises ClientDisconnectedError once the client left ("... disconnected {when}")."""
    if gone.is_set():
        raise ClientDisconnectedError(f"the client disconnected {when}", "nothing ran on the model")
