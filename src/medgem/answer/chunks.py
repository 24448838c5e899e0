"""What a user gets back: typed stream chunks and the final Answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from medgem.engines import base
from medgem.request.thinking import ThinkingSplitter
from medgem.structured import Constraint

INTENDED_USE_CAVEAT = (
    "MedGemma output is for research and development only: it has not been validated for "
    "clinical use and must not directly inform diagnosis or treatment. A qualified clinician "
    "must review it."
)
# For checkpoints medgem does not recognise as a MedGemma variant (a base Gemma GGUF, a test
# model): the same limits, without claiming the output is MedGemma's.
OTHER_MODEL_CAVEAT = (
    "This model is not a recognised MedGemma. Its output is for research and development only: "
    "it has not been validated for clinical use and must not directly inform diagnosis or "
    "treatment. A qualified clinician must review it."
)
NOT_MEDGEMMA_LABEL = (
    "NOT MEDGEMMA: medgem does not recognise this checkpoint as a MedGemma variant (name it with "
    "--variant if it is one); MedGemma's prompts, budgets and thinking are not assumed."
)
DEMO_LABEL = (
    "DEMO MODEL (not MedGemma): Gemma 3 270M base weights with an untrained vision tower. Its "
    "output shows that the pipeline runs; it is not medical advice and does not describe the image."
)
TEST_MODEL_LABEL = "TEST MODEL: random weights, output is meaningless."


@dataclass(frozen=True)
class ThinkingChunk:
    text: str


@dataclass(frozen=True)
class AnswerChunk:
    text: str


@dataclass(frozen=True)
class Answer:
    """A finished answer.

    Attributes:
        text: the answer, thought removed.
        thinking: the model's thought ("" when it did not think).
        finish_reason: "stop", "length" (budget reached) or "cancelled".
        usage: prompt and completion token counts.
        timings: time to first token and total seconds.
        model: which model and engine answered.
        caveat: the intended-use caveat ("" only when the operator turned it off).
        label: the demo/test-model label, "" for real MedGemma weights.
        audit_id: the audit record written for this answer: by this process, or by the medgem
            server that answered (remote engine); None when neither audits.
        served_by: the backend server that answered (remote engine), else None.
        parsed: with a JSON constraint, the answer parsed and validated against its schema;
            None when there was no constraint or the answer is not valid for it.
        structured_error: with a constraint, why the answer is not valid data (cut by the
            budget, not JSON, not the schema) in one line; None when it is valid.
    """

    text: str
    thinking: str
    finish_reason: base.FinishReason
    usage: base.Usage
    timings: base.Timings
    model: base.ModelInfo
    caveat: str = INTENDED_USE_CAVEAT
    label: str = ""
    raw: str = field(default="", repr=False)
    audit_id: str | None = None
    served_by: str | None = None
    parsed: Any = None
    structured_error: str | None = None

    @property
    def thought_truncated(self) -> bool:
        """True when the budget ran out inside the thought, so there is no answer yet."""
        return bool(self.thinking) and not self.text and self.finish_reason == "length"

    def to_dict(self) -> dict[str, object]:
        usage = asdict(self.usage) | {"total_tokens": self.usage.total_tokens}
        timings = asdict(self.timings) | {"decode_tokens_per_s": round(self.timings.decode_tokens_per_s, 3)}
        return {
            "answer": self.text, "thinking": self.thinking, "finish_reason": self.finish_reason,
            "usage": usage, "timings": timings, "model": asdict(self.model), "caveat": self.caveat,
            "label": self.label, "audit_id": self.audit_id, "served_by": self.served_by,
            "parsed": self.parsed, "structured_error": self.structured_error,
        }


@dataclass(frozen=True)
class FinalChunk:
    answer: Answer


StreamChunk = ThinkingChunk | AnswerChunk | FinalChunk


def label_for(model: base.ModelInfo) -> str:
    """The label every surface shows next to output from a demo or test model, or from a
    checkpoint that is not a recognised MedGemma variant."""
    if not model.demo:
        return "" if model.variant else NOT_MEDGEMMA_LABEL
    return TEST_MODEL_LABEL if model.id.startswith("medgem-test") else DEMO_LABEL


def assemble(events: Iterator[base.EngineEvent], model: base.ModelInfo,
             caveat: str = INTENDED_USE_CAVEAT,
             constraint: Constraint | None = None) -> Iterator[StreamChunk]:
    """Split an engine stream into thinking and answer chunks, ending with the final Answer;
    with a ``constraint``, the answer (thought removed) is parsed and validated against it."""
    splitter = ThinkingSplitter()
    thinking: list[str] = []
    answer: list[str] = []
    raw: list[str] = []
    finished: base.Finished | None = None
    for event in events:
        if isinstance(event, base.TextDelta):
            raw.append(event.text)
            pieces = list(splitter.feed(event.text))
        else:
            finished = event
            pieces = list(splitter.finish())
        for piece in pieces:
            if piece.kind == "thinking":
                thinking.append(piece.text)
                yield ThinkingChunk(piece.text)
            else:
                answer.append(piece.text)
                yield AnswerChunk(piece.text)
    if finished is None:
        finished = base.Finished("cancelled", base.Usage(0, 0), base.Timings(0.0, 0.0))
    text = "".join(answer).strip()
    checked = constraint.result(text, finished.finish_reason) if constraint is not None else None
    yield FinalChunk(Answer(
        text=text, thinking="".join(thinking).strip(),
        finish_reason=finished.finish_reason, usage=finished.usage, timings=finished.timings,
        model=model, caveat=caveat, label=label_for(model), raw="".join(raw),
        served_by=finished.served_by, audit_id=finished.audit_id,
        parsed=checked.value if checked is not None else None,
        structured_error=checked.error if checked is not None else None))
