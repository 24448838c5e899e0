"""The engine protocol: what every engine (transformers, llama.cpp, remote) promises.

An engine turns a Request into a stream of events: raw text deltas (thinking markers included;
the answer stage splits them) and one final Finished event with usage and timings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from medgem.request import Request

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Capabilities:
    images: bool
    thinking: bool
    streaming: bool = True
    batching: bool = False
    chat: bool = True


@dataclass(frozen=True)
class ModelInfo:
    """Who answered: enough to reproduce the run and to label demo output.

    Attributes:
        id: the model id (hub id, or the folder/file name for local checkpoints).
        revision: the commit hash or file digest when known.
        variant: the MedGemma variant id when recognised, else None.
        engine: registry name of the engine.
        dtype: weights' compute dtype, e.g. "bfloat16".
        quantization: "4bit", "8bit", "q4_k_m"..., or None.
        demo: True for demo/test models: their output must be labelled as such everywhere.
        context_length: the maximum prompt + answer tokens.
    """

    id: str
    revision: str | None
    variant: str | None
    engine: str
    dtype: str
    quantization: str | None = None
    demo: bool = False
    context_length: int = 131072
    path: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds. ``first_token_s`` counts from the request start (prefill + vision)."""

    first_token_s: float
    total_s: float
    completion_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.total_s - self.first_token_s
        if self.completion_tokens <= 1 or decode_time <= 0:
            return 0.0
        return (self.completion_tokens - 1) / decode_time


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    extra: dict[str, float] = field(default_factory=dict)


EngineEvent = TextDelta | Finished


@runtime_checkable
class Engine(Protocol):
    """The contract. Implementations live one per module in medgem.engines."""

    name: str
    info: ModelInfo
    capabilities: Capabilities

    def generate(
        self, request: Request, cancel: threading.Event | None = None
    ) -> Iterator[EngineEvent]:
        """Run one request. Yields TextDelta events, then exactly one Finished.

        Raises:
            UnsupportedInputError: images to a text-only model.
            ContextLengthError: the prompt does not fit.
        """
        ...

    def count_prompt_tokens(self, request: Request) -> int:
        """Tokens the rendered prompt takes (images included)."""
        ...

    def close(self) -> None:
        """Free the weights."""
        ...
