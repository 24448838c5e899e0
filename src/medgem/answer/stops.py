"""Stop strings, applied the same way for every engine.

The engine's raw text is scanned as it streams; text that might be the start of a stop string is
held back until it is decided. At the first stop string the text before it is kept, generation is
cancelled, and the answer finishes with reason "stop", as the OpenAI API reports it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence

from medgem.engines.base import EngineEvent, Finished, TextDelta
from medgem.request.thinking import partial_marker_length


def apply_stops(events: Iterator[EngineEvent], stops: Sequence[str], cancel: threading.Event
                ) -> Iterator[EngineEvent]:
    """Cut an engine stream at the first of ``stops``.

    Args:
        events: the engine's stream (its generation must watch ``cancel``).
        stops: non-empty stop strings.
        cancel: set when a stop string is found, so the engine stops generating.
    """
    stops = [s for s in stops if s]
    if not stops:
        yield from events
        return
    held = ""
    stopped = False
    for event in events:
        if isinstance(event, Finished):
            if held:  # never after a stop: it empties what was held
                yield TextDelta(held)
            yield dataclasses.replace(event, finish_reason="stop") if stopped else event
            return
        if stopped:
            continue  # the engine is winding down after the cancel
        held += event.text
        cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            if cut:
                yield TextDelta(held[:cut])
            held = ""
            stopped = True
            cancel.set()
            continue
        keep = max(partial_marker_length(held, s) for s in stops)
        if len(held) > keep:
            yield TextDelta(held[: len(held) - keep])
            held = held[len(held) - keep :]

