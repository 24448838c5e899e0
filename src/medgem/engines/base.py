"""The engine protocol: what every engine (transformers, llama.cpp, remote) promises.

An engine prepares a Request once (render, tokenize, preprocess images: the token count the
context check needs) and turns the prepared request into a stream of events: raw text deltas
(thinking markers included; the answer stage splits them) and one final Finished event with
usage and timings. Engines that run several requests at once add one of the batching
contracts (:class:`ContinuousBatching`, :class:`StaticBatching`), as
``Capabilities.batching`` says; ``medgem.engines.batching`` drives them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from medgem.request import Request
from medgem.request.variants import GEMMA3_CONTEXT

FinishReason = Literal["stop", "length", "cancelled"]
Batching = Literal["continuous", "static", "concurrent"]


def context_to_hold(tokens: int, up_to: int) -> int:
    """A context size that holds ``tokens``: a multiple of 1,024, at most ``up_to`` (the
    model's own window)."""
    return min(up_to, -(-tokens // 1024) * 1024)


@dataclass(frozen=True)
class Capabilities:
    #: whether the model takes images (MedGemma.generate refuses them otherwise)
    images: bool
    #: how the engine runs several requests at once (medgem.engines.batching reads it):
    #: "continuous" (:class:`ContinuousBatching`: a request joins the running batch), "static"
    #: (:class:`StaticBatching`: a batch runs to its end), "concurrent" (generate is
    #: thread-safe: a remote server batches), or None (one at a time).
    batching: Batching | None = None
    #: whether decoding can be constrained to a JSON schema (``GenerationOptions.constraint``);
    #: MedGemma.generate refuses a constrained request otherwise
    constrained: bool = False
    #: the longest context the engine could hold, where it holds less than that now (llama.cpp
    #: allocates ``n_ctx``, not the model's whole window): a longer prompt fits once it is
    #: loaded with a larger ``n_ctx``. None: ``ModelInfo.context_length`` is already the limit.
    context_up_to: int | None = None


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
        adapter: the LoRA adapter's name when one is applied (see medgem.adapters).
        adapter_sha256: the adapter's content hash: the exact weights that answered.
    """

    id: str
    revision: str | None
    variant: str | None
    engine: str
    dtype: str
    quantization: str | None = None
    demo: bool = False
    context_length: int = GEMMA3_CONTEXT
    path: str | None = None
    adapter: str | None = None
    adapter_sha256: str | None = None


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
    """The end of a request. ``served_by``: the server that answered (remote engine);
    ``audit_id``: the audit record that server wrote for it (a medgem server), else None."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    extra: dict[str, float] = field(default_factory=dict)
    served_by: str | None = None
    audit_id: str | None = None


EngineEvent = TextDelta | Finished


@dataclass(frozen=True, eq=False)
class Prepared:
    """A request as one engine encoded it, once: the context check reads ``prompt_tokens`` and
    ``generate`` consumes ``state`` (token tensors, libmtmd chunks, ...) without encoding again.

    Attributes:
        request: the request it was made from.
        prompt_tokens: tokens the prompt takes in this engine (images included).
        state: the engine's own encoding; opaque to everyone else.
        release: frees what ``state`` holds when the request is dropped before ``generate``
            (safe to call more than once; ``generate`` releases it itself).
    """

    request: Request
    prompt_tokens: int
    state: Any = None
    release: Callable[[], None] = field(default=lambda: None)


def as_prepared(engine: Engine, item: Request | Prepared) -> Prepared:
    """``item`` as a Prepared of ``engine``: prepared ones pass through, requests are prepared."""
    return item if isinstance(item, Prepared) else engine.prepare(item)


@runtime_checkable
class Engine(Protocol):
    """The contract. Implementations live one per module in medgem.engines."""

    name: str
    info: ModelInfo
    capabilities: Capabilities

    def prepare(self, request: Request) -> Prepared:
        """Render and tokenize a request once (images preprocessed), counting its tokens.

        Raises:
            UnsupportedInputError: images to a text-only model.
        """
        ...

    def generate(
        self, request: Request | Prepared, cancel: threading.Event | None = None
    ) -> Iterator[EngineEvent]:
        """Run one request (prepared by :meth:`prepare`, or prepared here). Yields TextDelta
        events, then exactly one Finished.

        Raises:
            UnsupportedInputError: images to a text-only model.
            ContextLengthError: the prompt does not fit.
        """
        ...

    def close(self) -> None:
        """Free the weights."""
        ...

    def health(self) -> dict[str, object]:
        """What a health check reports beyond "up" (the remote engine: each backend's URL,
        health and load); {} when there is nothing more."""
        ...


class RunningSequence(Protocol):
    """One request inside a continuous batch: the events its steps made (an error ends it)."""

    events: list[EngineEvent | BaseException]
    done: bool


S = TypeVar("S", bound=RunningSequence)


class ContinuousBatching(Engine, Protocol[S]):
    """``Capabilities.batching == "continuous"``: requests join and leave a running batch."""

    def start(self, prepared: Prepared, cancel: threading.Event | None = None,
              started: float | None = None) -> S:
        """Take a prepared request into the batch; nothing runs until :meth:`step`.

        Raises:
            ContextLengthError: the prompt does not fit.
            ResourceError: the batch is full.
        """
        ...

    def step(self, sequences: list[S]) -> None:
        """Advance every running sequence once; events (and errors) collect on each, ``done``
        marks the finished ones (their places are free again)."""
        ...

    def abandon(self, sequence: S) -> None:
        """Drop a sequence after an engine fault and free its place."""
        ...


class StaticBatching(Engine, Protocol):
    """``Capabilities.batching == "static"``: requests that sample alike run as one batch."""

    def generate_batch(self, items: list[Prepared],
                       cancels: list[threading.Event]) -> Iterator[tuple[int, EngineEvent]]:
        """Run the batch to its end: (row, event) pairs, each row ending with one Finished."""
        ...
