"""Constrained decoding on transformers: the tiny real Gemma 3 VLM (random weights) writes
garbage, but garbage that is valid JSON for each schema, because llguidance's masks leave it
nothing else; free rows of the same static batch are untouched; with think on the thought is
free and the JSON starts after its marker. Nothing is mocked.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

torch = pytest.importorskip("torch")

from medgem.engines import HFOptions, load_engine  # noqa: E402
from medgem.engines.base import Finished, TextDelta  # noqa: E402
from medgem.engines.grammar import GuidedRows  # noqa: E402
from medgem.request import GenerationOptions, Message, Request, TextPart  # noqa: E402
from medgem.request.thinking import split_thinking  # noqa: E402
from medgem.resolve import resolve_checkpoint  # noqa: E402
from medgem.structured import Constraint  # noqa: E402
from structured_schemas import NESTED_SCHEMA  # noqa: E402


class Triage(BaseModel):
    model_config = ConfigDict(extra="forbid")  # else any further key is allowed, and free

    level: Literal["green", "yellow", "red"]
    age: int = Field(ge=0, le=120)
    admit: bool


# Random weights never choose to close a free string: every string here has a maxLength.
NESTED = Constraint.from_schema(NESTED_SCHEMA, name="nested")
ENUM_ARRAY = Constraint.from_schema({
    "type": "array", "items": {"enum": ["atelectasis", "cardiomegaly", "effusion"]},
    "minItems": 1, "maxItems": 3,
}, name="enum_array")
BOUNDED = Constraint.from_schema({
    "type": "object",
    "properties": {"code": {"type": "string", "maxLength": 5},
                   "count": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["code", "count"], "additionalProperties": False,
}, name="bounded")
BOXES_OF = Constraint.from_schema({  # the built-in boxes shape, labels from a list
    "type": "array", "maxItems": 2,
    "items": {"type": "object", "properties": {
        "box_2d": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                   "minItems": 4, "maxItems": 4},
        "label": {"enum": ["heart", "right lung", "left lung"]}},
        "required": ["box_2d", "label"], "additionalProperties": False},
}, name="boxes_of")
SCHEMAS = [NESTED, ENUM_ARRAY, BOUNDED, BOXES_OF, Constraint.from_model(Triage)]


def question(tokens: int, constraint: Constraint | None = None, think: bool = False) -> Request:
    options = GenerationOptions(max_new_tokens=tokens, constraint=constraint, think=think)
    return Request((Message("user", (TextPart("Triage this patient as JSON."),)),), options)


@pytest.fixture(scope="module")
def engine(tiny_vlm_checkpoint: Path) -> Any:
    engine = load_engine("hf", resolve_checkpoint(tiny_vlm_checkpoint), HFOptions())
    yield engine
    engine.close()


def batch(engine: Any, requests: list[Request]) -> list[tuple[str, Finished]]:
    items = [engine.prepare(r) for r in requests]
    texts = [""] * len(items)
    finished: dict[int, Finished] = {}
    for row, event in engine.generate_batch(items, [threading.Event() for _ in items]):
        if isinstance(event, TextDelta):
            texts[row] += event.text
        else:
            finished[row] = event
    return [(texts[i], finished[i]) for i in range(len(items))]


def test_the_direct_path_can_constrain(engine: Any) -> None:
    assert engine.capabilities.constrained


@pytest.mark.parametrize("constraint", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_every_constrained_answer_parses_and_validates(engine: Any, constraint: Constraint) -> None:
    [(text, finished)] = batch(engine, [question(80, constraint)])
    assert finished.finish_reason == "stop", text
    assert constraint.result(text, finished.finish_reason).valid, text


def test_constrained_and_free_rows_share_one_static_batch(engine: Any) -> None:
    """Free rows decode exactly as they do in a batch of free rows only (same shapes, same
    kernels): the processor never touched them."""
    free_a, free_b = question(10), question(12)
    mixed = batch(engine, [free_a, question(80, NESTED), free_b, question(80, BOUNDED)])
    alone = batch(engine, [free_a, question(10), free_b, question(10)])
    assert mixed[0][0] == alone[0][0] and mixed[2][0] == alone[2][0]
    assert mixed[0][1].finish_reason == "length"
    for (text, finished), constraint in ((mixed[1], NESTED), (mixed[3], BOUNDED)):
        assert finished.finish_reason == "stop" and constraint.result(text).valid, text


def test_budget_cut_is_length_and_invalid(engine: Any) -> None:
    [(text, finished)] = batch(engine, [question(4, NESTED)])
    assert finished.finish_reason == "length"
    checked = NESTED.result(text, finished.finish_reason)
    assert not checked.valid and "token budget" in checked.error


def test_thought_is_free_and_the_json_starts_after_its_marker(engine: Any) -> None:
    """The processor driven step by step with the real tokenizer: row 0 thinks, row 1 is free.
    Before the thought, row 0 may open it or start the JSON; inside, its scores pass through;
    after the closing marker only the JSON fits. Row 1 is never changed."""
    grammars = engine._grammars
    tokenizer = engine.tokenizer
    processor = GuidedRows([grammars.guide(NESTED, think=True), None], grammars, {1, 106})
    vocab = int(engine.model.config.get_text_config().vocab_size)
    open_id, close_id = grammars.think_open, grammars.think_close
    hello = tokenizer.encode("Hello", add_special_tokens=False)[0]
    answer = tokenizer.encode('{"patient":{"age":80,"sex":"female"},"urgent":false}',
                              add_special_tokens=False)
    ids = torch.tensor([[2, 5], [2, 7]])

    def step(token: int) -> tuple[Any, Any]:
        nonlocal ids
        if token >= 0:
            ids = torch.cat([ids, torch.tensor([[token], [hello]])], dim=1)
        scores = torch.randn(2, vocab)
        before = scores.clone()
        after = processor(ids, scores)
        assert torch.equal(after[1], before[1])  # the free row
        return before[0], after[0]

    before, after = step(-1)
    assert torch.isfinite(after[open_id]) and torch.isfinite(after[answer[0]])
    assert after[hello] == float("-inf")
    for token in [open_id, *tokenizer.encode("thought\nold, stable", add_special_tokens=False)]:
        before, after = step(token)
        assert torch.equal(before, after)  # inside the thought: free
    before, after = step(close_id)
    assert after[open_id] == after[hello] == float("-inf") and torch.isfinite(after[answer[0]])
    for i, token in enumerate(answer[:-1]):
        assert torch.isfinite(step(token)[1][answer[i + 1]])


def test_thinking_on_end_to_end_a_thought_cut_by_the_budget_is_invalid(engine: Any) -> None:
    """With think on, the random model takes the open marker (one of the two tokens the first
    mask allows) and then, free inside its thought, never closes it: the budget ends the reply
    in the thought, which is length and invalid, never data. Without think, the same request
    is constrained from the first token and validates."""
    [(text, finished)] = batch(engine, [question(40, NESTED, think=True)])
    assert finished.finish_reason == "length"
    assert not NESTED.result(split_thinking(text)[1], finished.finish_reason).valid
    [(text, finished)] = batch(engine, [question(40, NESTED)])
    assert finished.finish_reason == "stop" and NESTED.result(text).valid


def test_pipeline_path_says_it_cannot_constrain(tiny_vlm_checkpoint: Path) -> None:
    from medgem.engines import PipelineOptions

    engine = load_engine("hf-pipeline", resolve_checkpoint(tiny_vlm_checkpoint), PipelineOptions())
    try:
        assert not engine.capabilities.constrained
    finally:
        engine.close()
