"""Many requests on one engine at once: the batcher every surface shares.

Decode is memory-bound: one step reads all the weights whether it serves one sequence or eight,
so requests in flight together cost little more than one. Callers on any thread (server
workers, eval threads, ``MedGemma.ask_many``) hand prepared requests to :class:`Batcher` and
read their own events back; one worker thread owns the engine and runs them by the engine's
``Capabilities.batching``:

- ``"continuous"`` (llama.cpp): up to ``parallel`` sequences run in one context; each step
  decodes the next token of every running sequence in one batch and advances one prefill; a new
  request joins at the next step, a finished or cancelled one frees its slot there.
- ``"static"`` (transformers): waiting requests with the same sampling settings run as one
  left-padded ``generate`` batch; newcomers wait for the next batch.
- ``"concurrent"`` (remote) and None: no worker; ``generate`` calls the engine directly (a remote
  server batches what it receives; a serial engine serialises itself).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from medgem.engines.base import (
    ContinuousBatching,
    Engine,
    EngineEvent,
    Finished,
    Prepared,
    RunningSequence,
    StaticBatching,
)

log = logging.getLogger("medgem")


@dataclass(eq=False)
class _Ticket:
    """One request handed to the worker; its events come back through ``out``."""

    prepared: Prepared
    cancel: threading.Event
    started: float = field(default_factory=time.perf_counter)
    out: queue.SimpleQueue[EngineEvent | BaseException] = field(default_factory=queue.SimpleQueue)


class Batcher:
    """Runs requests from many threads together on one engine.

    Args:
        engine: the loaded engine; its ``capabilities.batching`` picks the way (module doc).
        parallel: the most requests decoded together.
    """

    def __init__(self, engine: Engine, parallel: int) -> None:
        self.engine = engine
        self.parallel = max(1, parallel)
        self.mode = engine.capabilities.batching if self.parallel > 1 else None
        self._waiting: deque[_Ticket] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.running = 0  # requests the worker runs now (the server's metrics read it)
        self.peak = 0  # the most it ran together
        self._thread: threading.Thread | None = None
        if self.mode in ("continuous", "static"):
            self._thread = threading.Thread(target=self._work, name="medgem-batcher", daemon=True)
            self._thread.start()

    def generate(self, prepared: Prepared,
                 cancel: threading.Event | None = None) -> Iterator[EngineEvent]:
        """The request's events, as ``engine.generate`` gives them. A caller that stops reading
        cancels its request (its slot frees at the next step)."""
        if self._thread is None:
            yield from self.engine.generate(prepared, cancel)
            return
        ticket = _Ticket(prepared, cancel if cancel is not None else threading.Event())
        with self._wake:
            if self._closed:
                prepared.release()
                raise RuntimeError("the batcher is closed")
            self._waiting.append(ticket)
            self._wake.notify()
        finished = False
        try:
            while not finished:
                event = ticket.out.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                finished = isinstance(event, Finished)
                yield event
        finally:
            if not finished:
                ticket.cancel.set()

    def close(self) -> None:
        """Let running and waiting requests finish, then stop the worker."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    # --- the worker ----------------------------------------------------------------------------

    def _next(self, running: int) -> list[_Ticket] | None:
        """Waiting tickets that may start now (blocks while there is nothing to do); None: stop."""
        with self._wake:
            while not self._waiting and not running:
                if self._closed:
                    return None
                self._wake.wait()
            room = self.parallel - running
            return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]

    def _work(self) -> None:
        while True:
            try:
                if self.mode == "continuous":
                    if not self._continuous():
                        return
                elif not self._static():
                    return
            except Exception:  # never let the worker die: callers would wait forever
                log.exception("the batch worker failed")

    def _continuous(self) -> bool:
        engine = cast("ContinuousBatching[RunningSequence]", self.engine)
        running: list[tuple[_Ticket, RunningSequence]] = []
        while True:
            tickets = self._next(len(running))
            if tickets is None:
                return False
            for ticket in tickets:
                try:
                    running.append((ticket, engine.start(ticket.prepared, ticket.cancel,
                                                         ticket.started)))
                except Exception as exc:
                    ticket.prepared.release()
                    ticket.out.put(exc)
            self._count(len(running))
            if not running:
                continue
            try:
                engine.step([sequence for _, sequence in running])
            except Exception as exc:  # an engine fault ends every running request with it
                for ticket, sequence in running:
                    engine.abandon(sequence)
                    ticket.out.put(exc)
                running = []
                continue
            for ticket, sequence in running:
                for event in sequence.events:
                    ticket.out.put(event)
                sequence.events.clear()
            running = [(t, s) for t, s in running if not s.done]
            self._count(len(running))

    def _static(self) -> bool:
        tickets = self._next(0)
        if tickets is None:
            return False
        # Only requests that sample alike share a generate() call; the rest wait their turn.
        key = _sampling(tickets[0])
        batch = [t for t in tickets if _sampling(t) == key]
        with self._wake:
            self._waiting.extendleft(reversed([t for t in tickets if _sampling(t) != key]))
        engine = cast(StaticBatching, self.engine)
        self._count(len(batch))
        try:
            for index, event in engine.generate_batch([t.prepared for t in batch],
                                                      [t.cancel for t in batch]):
                batch[index].out.put(event)
        except Exception as exc:
            for ticket in batch:
                ticket.out.put(exc)
        self._count(0)
        return True

    def _count(self, running: int) -> None:
        self.running = running
        self.peak = max(self.peak, running)


def _sampling(ticket: _Ticket) -> tuple[Any, ...]:
    options = ticket.prepared.request.options
    return (options.greedy, options.temperature, options.top_p, options.seed)
