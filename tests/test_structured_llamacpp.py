"""Constrained decoding on llama.cpp with the real Gemma 3 270M GGUF: every answer parses and
validates against its schema (nested objects, arrays, enums, number ranges, the built-ins), with
thinking on, in a batch beside free requests, and a budget cut is marked invalid.

The 270M is a base model that knows nothing of these schemas: what it writes under the
constraint is valid JSON because of the constraint alone. Nothing is mocked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

pytest.importorskip("llama_cpp")
pytest.importorskip("llguidance")
pytestmark = pytest.mark.usefixtures("llamacpp_runs")

from medgem.engines import LlamaCppOptions, load_engine  # noqa: E402
from medgem.engines.base import Finished, TextDelta  # noqa: E402
from medgem.request import GenerationOptions, Message, Request, TextPart  # noqa: E402
from medgem.request.thinking import THOUGHT_CLOSE, THOUGHT_OPEN, split_thinking  # noqa: E402
from medgem.resolve import resolve_checkpoint  # noqa: E402
from medgem.structured import Constraint  # noqa: E402
from medgem.structured.builtin import BOXES, CXR_FINDINGS, LAB_VALUES  # noqa: E402
from structured_schemas import NESTED_SCHEMA  # noqa: E402


class Vitals(BaseModel):
    temperature_c: float = Field(ge=30, le=45)
    heart_rate: int = Field(ge=20, le=250)
    rhythm: str = Field(pattern="^(sinus|af|flutter)$")


NESTED = Constraint.from_schema(NESTED_SCHEMA, name="nested")
ENUM_ARRAY = Constraint.from_schema({
    "type": "array", "items": {"enum": ["atelectasis", "cardiomegaly", "effusion", "edema"]},
    "minItems": 1, "maxItems": 3,
}, name="enum_array")
SCORES = Constraint.from_schema({
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                   "grade": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["score", "grade"], "additionalProperties": False,
}, name="scores")
VITALS = Constraint.from_model(Vitals)
ANY_OBJECT = Constraint.json_object()
#: One example answer per schema: the prompt shows it and asks for another (a base model copies
#: the pattern and closes the JSON; the constraint alone makes what it writes valid).
EXAMPLES: dict[Constraint, Any] = {
    NESTED: {"patient": {"age": 64, "sex": "male"}, "urgent": True},
    ENUM_ARRAY: ["effusion", "edema"],
    SCORES: {"score": 0.5, "grade": 3},
    VITALS: {"temperature_c": 37.2, "heart_rate": 88, "rhythm": "sinus"},
    LAB_VALUES: [{"name": "CRP", "value": 12, "unit": "mg/L"}],
    CXR_FINDINGS: {"findings": [{"finding": "effusion", "certainty": "probable"}]},
    BOXES: [{"box_2d": [100, 200, 300, 400], "label": "heart"}],
    ANY_OBJECT: {"finding": "normal"},
}
SCHEMAS = list(EXAMPLES)
PROMPT = "Findings of the chest X-ray, as JSON:"


def few_shot(constraint: Constraint) -> str:
    example = json.dumps(EXAMPLES[constraint], separators=(",", ":"))
    return f"Report 1 as JSON: {example}\nReport 2 as JSON: {example}\nReport 3 as JSON:"


def completion(text: str, tokens: int, constraint: Constraint | None = None,
               think: bool = False) -> Request:
    options = GenerationOptions(max_new_tokens=tokens, constraint=constraint, think=think)
    return Request((Message("user", (TextPart(text),)),), options, template="completion")


def run(engine: Any, request: Request) -> tuple[str, Finished]:
    text, finished = "", None
    for event in engine.generate(request):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            finished = event
    assert finished is not None
    return text, finished


@pytest.fixture(scope="module")
def engine() -> Any:
    from medgem.demo.build import demo_gguf_path

    engine = load_engine("llamacpp", resolve_checkpoint(demo_gguf_path()),
                         LlamaCppOptions(n_ctx=2048, parallel=4))
    yield engine
    engine.close()


def test_the_engine_says_it_can_constrain(engine: Any) -> None:
    assert engine.capabilities.constrained


@pytest.mark.parametrize("constraint", SCHEMAS, ids=[c.name for c in SCHEMAS])
def test_every_constrained_answer_parses_and_validates(engine: Any, constraint: Constraint) -> None:
    text, finished = run(engine, completion(few_shot(constraint), 80, constraint))
    assert finished.finish_reason == "stop", text  # the JSON closed, then only an end token fit
    checked = constraint.result(text, finished.finish_reason)
    assert checked.valid, (text, checked.error)
    assert json.loads(text) == checked.value


def test_free_answer_is_not_json(engine: Any) -> None:
    """The same prompt without a schema: the base model does not write JSON by itself, so the
    JSON above is the constraint's doing."""
    text, _ = run(engine, completion(PROMPT, 12))
    with pytest.raises(ValueError):
        json.loads(text)


def test_budget_cut_is_length_and_invalid(engine: Any) -> None:
    text, finished = run(engine, completion(PROMPT, 6, BOXES))
    assert finished.finish_reason == "length"
    checked = BOXES.result(text, finished.finish_reason)
    assert not checked.valid and "token budget" in checked.error and checked.value is None


def test_thinking_on_leaves_the_first_token_free_to_open_a_thought(engine: Any) -> None:
    """With think on, the first draw may open a thought or start the JSON; this model starts
    the JSON, which still validates, and the thought split leaves it whole."""
    text, finished = run(engine, completion(few_shot(NESTED), 80, NESTED, think=True))
    thinking, answer = split_thinking(text)
    assert thinking == "" and NESTED.result(answer, finished.finish_reason).valid, text


def test_the_thought_is_free_and_the_json_starts_after_its_marker(engine: Any) -> None:
    """The guide of a thinking request, walked through a thought token by token on the real
    vocabulary: before, the thought marker and the JSON's first byte are allowed; inside, the
    row is left free; after the closing marker only JSON fits."""
    import numpy as np

    grammars = engine._grammars
    guide = grammars.guide(NESTED, think=True)
    open_id, close_id = grammars.think_open, grammars.think_close
    assert engine.tokenize(THOUGHT_OPEN) == [open_id] and engine.tokenize(THOUGHT_CLOSE) == [close_id]

    def allowed(token: int) -> bool:
        mask = grammars.bitmask(1)
        assert guide.fill(mask, 0)
        return bool((mask.view(np.uint32)[0, token // 32] >> np.uint32(token % 32)) & 1)

    answer = engine.tokenize('{"patient":{"age":80,"sex":"female"},"urgent":false}')
    word = engine.tokenize("Hello")[0]
    assert allowed(open_id) and allowed(answer[0]) and not allowed(word)
    guide.accept(open_id)
    thought = engine.tokenize("thought\nThe patient is old, not urgent.")
    for token in thought:
        mask = grammars.bitmask(1)
        assert not guide.fill(mask, 0) and (mask == -1).all()  # untouched: a free row
        guide.accept(token)
    guide.accept(close_id)
    assert not allowed(open_id) and not allowed(word) and allowed(answer[0])
    for token in answer:
        assert allowed(token)
        guide.accept(token)
    assert guide.error is None and guide.matcher.is_accepting()


def test_constrained_and_free_requests_share_one_batch(engine: Any) -> None:
    """Four sequences decoded together: each constrained one validates against its own schema,
    the free ones are not constrained at all."""
    requests = [completion(PROMPT, 12), completion(few_shot(NESTED), 80, NESTED),
                completion("The heart has four", 12), completion(few_shot(SCORES), 80, SCORES, think=True)]
    sequences = [engine.start(engine.prepare(r)) for r in requests]
    texts = [""] * 4
    finished: list[Finished | None] = [None] * 4
    while not all(s.done for s in sequences):
        engine.step(sequences)
        for i, sequence in enumerate(sequences):
            for event in sequence.take():
                if isinstance(event, TextDelta):
                    texts[i] += event.text
                else:
                    finished[i] = event
    for i, constraint in ((1, NESTED), (3, SCORES)):
        assert finished[i] is not None and finished[i].finish_reason == "stop"
        assert constraint.result(texts[i]).valid, texts[i]
    for i in (0, 2):
        assert finished[i] is not None and finished[i].finish_reason == "length"
        assert not texts[i].lstrip().startswith("{"), texts[i]


def test_a_strict_schema_that_says_nothing_of_other_keys_gets_none(engine: Any) -> None:
    """The runaway seen with the demo model: a schema without additionalProperties let the model
    add keys of its own until its budget ran out. Strict (the default) closes the object, even
    when the prompt's example shows extra keys."""
    schema = {"type": "object", "properties": {"diagnosis": {"type": "string", "maxLength": 20},
                                               "urgent": {"type": "boolean"}},
              "required": ["diagnosis", "urgent"]}
    example = '{"diagnosis":"sepsis","urgent":true,"patient_id":1,"patient_name":"x","ward":"b"}'
    prompt = f"Report 1 as JSON: {example}\nReport 2 as JSON: {example}\nReport 3 as JSON:"
    text, finished = run(engine, completion(prompt, 60, Constraint.from_schema(schema)))
    assert finished.finish_reason == "stop", text
    assert set(json.loads(text)) <= {"diagnosis", "urgent"}
