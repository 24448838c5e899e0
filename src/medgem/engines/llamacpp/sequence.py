"""What the llama.cpp engine keeps per KV-cache sequence (a slot) and per request in flight
(a sequence), from its prefill to its Finished event (see ``LlamaCppEngine.step``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from medgem.engines.base import EngineEvent, Prepared
from medgem.engines.grammar import RowGuide
from medgem.engines.llamacpp.prompt import Prompt, Unit


@dataclass(eq=False)
class Slot:
    """One sequence of the llama.cpp context; its cache outlives a request (prefix reuse)."""

    seq_id: int
    cached: list[Unit] = field(default_factory=list)  # what its KV cells hold, in order
    sequence: Sequence | None = None  # the request running in it


@dataclass(eq=False)
class Sequence:
    """One request in a slot, from prefill to its Finished event (see LlamaCppEngine.step)."""

    prepared: Prepared
    prompt: Prompt
    slot: Slot
    cancel: threading.Event | None
    started: float
    sampler: Any
    budget: int
    reused: int
    position: int  # the next KV position
    next_unit: int  # prefill progress
    decoder: Any
    guide: RowGuide | None = None  # the JSON constraint, when the request has one
    tokens: list[int] = field(default_factory=list)
    events: list[EngineEvent | BaseException] = field(default_factory=list)
    pending: int | None = None  # sampled and sent, decoded in the next step
    first: float | None = None
    vision_s: float = 0.0
    images_cached: int = 0  # images whose embeddings came from the cache
    images_encoded: int = 0  # images that went through the vision tower
    prefill_s: float = 0.0
    lm_tokens: int = 0  # prompt tokens timed alone through the language model (see speeds)
    lm_s: float = 0.0
    lm_work: float = 0.0  # keys those tokens attended (speeds.attention_work)
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.next_unit < len(self.prompt.units)

    def take(self) -> Iterator[EngineEvent]:
        """The events so far (an error is raised in the caller's thread)."""
        events, self.events = self.events, []
        for event in events:
            if isinstance(event, BaseException):
                raise event
            yield event


