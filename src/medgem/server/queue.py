"""The engine queue: ``workers`` threads each run one request (the model's batcher decodes
the running ones together: ``--parallel``); a bounded line waits.

The event loop submits jobs; a worker runs each on the engine and hands each chunk back to
the loop. A full line raises :class:`QueueFullError` (429 with Retry-After, estimated from the
service times measured on this server). Setting a job's ``cancel`` event (client gone) stops
its work at the next check: before the engine prepares it, before prefill, or during decode.
``close`` drains: queued and running jobs finish, new ones are refused.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from medgem.answer import Answer, FinalChunk, StreamChunk
from medgem.errors import ClientDisconnectedError, DrainingError, MedgemError, QueueFullError
from medgem.request import Request
from medgem.server.admission import retry_after

log = logging.getLogger("medgem.server")

RunFn = Callable[["Job"], Iterator[StreamChunk]]
RECENT_SERVICES = 16  # service times the Retry-After estimate averages


@dataclass(frozen=True)
class Started:
    """The engine accepted the request (context checked); the job's ``queue_s`` says how long
    it waited."""


@dataclass(frozen=True)
class Completed:
    """The answer, after its audit record was made durable."""

    answer: Answer
    record_id: str | None


@dataclass(frozen=True)
class Failed:
    error: BaseException


JobItem = Started | StreamChunk | Completed | Failed
# finalize(job, answer, error) -> audit record id. Runs on the worker thread before the
# final item is handed back, so the record is durable before the last byte goes out.
FinalizeFn = Callable[["Job", Answer | None, BaseException | None], str | None]


@dataclass
class Job:
    """One request on its way through the engine."""

    request: Request
    finalize: FinalizeFn
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event  # set when the client leaves (or the drain deadline stops the job)
    out: asyncio.Queue[JobItem] = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # Set by the submitter once the request's accept record is durable: a worker waits for it.
    accepted: threading.Event = field(default_factory=threading.Event)

    def push(self, item: JobItem) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    @property
    def queue_s(self) -> float:
        return (self.started or time.monotonic()) - self.enqueued


class EngineQueue:
    """A bounded line in front of the engine workers.

    Args:
        run: starts one generation for a job (``MedGemma.generate`` with its audit context).
        max_waiting: requests allowed to wait while the workers are busy.
        min_retry_after: the least Retry-After, in seconds.
        workers: requests running at once (the model's ``parallel``).
    """

    def __init__(self, run: RunFn, max_waiting: int, min_retry_after: int = 1,
                 workers: int = 1) -> None:
        self._run = run
        self._max_waiting = max_waiting
        self._min_retry_after = min_retry_after
        self._workers = max(1, workers)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._draining = False
        # Seconds from a worker taking a job to its answer, for the last few answered jobs.
        self._services: deque[float] = deque(maxlen=RECENT_SERVICES)
        # id(job) -> (the job, when a worker took it), for each job a worker runs now
        self._running: dict[int, tuple[Job, float]] = {}
        self._threads = [threading.Thread(target=self._work, name=f"medgem-engine-{n}", daemon=True)
                         for n in range(self._workers)]
        for thread in self._threads:
            thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, request: Request, finalize: FinalizeFn, *,
               cancel: threading.Event, **context: Any) -> Job:
        """Queue a request (call on the event loop); no worker runs it before the caller sets
        its ``accepted`` event, once it recorded the request as accepted.

        Args:
            cancel: the job's cancel event (set when its client leaves).
            **context: what ``finalize`` and the audit record need (kept on the job).

        Raises:
            QueueFullError: the line is full.
            DrainingError: the server is shutting down.
        """
        job = Job(request, finalize, asyncio.get_running_loop(), cancel, context=context)
        with self._lock:
            if self._draining:
                raise DrainingError("the server is shutting down", "retry on another instance")
            if (self._waiting >= self._max_waiting
                    and len(self._running) + self._waiting >= self._workers):
                raise QueueFullError(self._waiting, self.retry_after())
            self._waiting += 1
        self._jobs.put(job)
        return job

    def retry_after(self) -> int:
        """Whole seconds until this server likely has room: the typical service time (the mean
        of the last answered jobs, and no less than the oldest running job has taken so far)
        times the place a new request would take in line, shared by the workers. Bounded to
        ``[min_retry_after, 600]``."""
        now = time.monotonic()
        oldest = max((now - since for _, since in list(self._running.values())), default=0.0)
        return retry_after(self._services, self._min_retry_after, at_least=oldest,
                           times=(self._waiting + 1) / self._workers)

    def stop_accepting(self) -> None:
        """Refuse new jobs from now on (503); queued and running ones go on."""
        with self._lock:
            self._draining = True

    def expire(self, error: Callable[[], BaseException]) -> tuple[int, int]:
        """The drain deadline: every job still waiting fails with ``error()`` (finalize records
        it), every running one is told to stop (its cancel event set) and its cut answer goes
        out as ``error()`` too (recorded as cancelled), so that no client takes it for a whole
        one. Returns (failed, stopped)."""
        dropped: list[Job] = []
        sentinels = 0
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is None:
                sentinels += 1
            else:
                dropped.append(item)
        for _ in range(sentinels):
            self._jobs.put(None)
        with self._lock:
            self._waiting -= len(dropped)
            running = [job for job, _ in self._running.values()]
        for job in running:
            job.context["drained"] = error
            job.cancel.set()
        for job in dropped:
            self._finish(job, None, error())
        return len(dropped), len(running)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, let queued and running ones finish; True when the workers ended."""
        with self._lock:
            self._draining = True
        for _ in self._threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    # --- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._waiting -= 1
                self._running[id(job)] = (job, time.monotonic())
            try:
                self._serve(job)
            finally:
                with self._lock:
                    self._running.pop(id(job), None)

    def _serve(self, job: Job) -> None:
        job.accepted.wait()
        job.started = time.monotonic()
        if job.cancel.is_set():
            self._finish(job, None, ClientDisconnectedError("the client disconnected while waiting",
                                                            "nothing ran on the model"))
            return
        try:
            chunks = self._run(job)
            job.push(Started())
            answer: Answer | None = None
            for chunk in chunks:
                if isinstance(chunk, FinalChunk):
                    answer = chunk.answer
                else:
                    job.push(chunk)
            if answer is None:
                raise RuntimeError("the engine ended without an answer")
        except Exception as exc:
            if not isinstance(exc, MedgemError):
                log.exception("generation failed")
            self._finish(job, None, exc)
            return
        self._finish(job, answer, None)
        if answer.finish_reason != "cancelled":  # a cut-short job says nothing of service time
            self._services.append(time.monotonic() - job.started)

    def _finish(self, job: Job, answer: Answer | None, error: BaseException | None) -> None:
        try:
            record_id = job.finalize(job, answer, error)
        except Exception as exc:  # the audit write failed: the answer must not go out
            log.exception("could not write the audit record")
            job.push(Failed(exc))
            return
        drained = job.context.get("drained")
        if answer is not None and drained is not None and answer.finish_reason == "cancelled":
            job.push(Failed(drained()))  # cut by the drain deadline: an error, not a partial answer
            return
        job.push(Completed(answer, record_id) if answer is not None else Failed(error or RuntimeError()))
