"""Structured answers over real HTTP: OpenAI's ``response_format`` on /v1/chat/completions
(streamed and not) and ``schema`` / ``format`` on /api/ask, against `medgem serve` of the real
Gemma 3 270M GGUF under llama.cpp, whose grammar sampler constrains decoding.

The 270M is a base model that knows nothing of these schemas, so JSON that validates is the
constraint's doing. Bad input (an invalid schema, an unsupported feature, a non-JSON format, a
schema for an engine that cannot constrain) is a 400 with an OpenAI error body before anything
reaches the model; a reply the budget cuts is finish_reason "length" and never valid data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from medgem.audit import AuditStore, open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from medgem.structured import Constraint
from medgem.structured.builtin import BOXES, CXR_FINDINGS
from structured_schemas import NESTED_SCHEMA
from test_server_helpers import ScriptedEngine, audited, free_port, serve_in_thread, wait_healthy

pytest.importorskip("llama_cpp")

QUESTION = "Findings of the chest X-ray, as JSON:"
NESTED = NESTED_SCHEMA
FINDINGS = {  # an array of objects with enums, 1 to 3 of them
    "type": "array", "minItems": 1, "maxItems": 3,
    "items": {"type": "object", "properties": {
        "finding": {"enum": ["atelectasis", "cardiomegaly", "effusion", "edema", "none"]},
        "side": {"enum": ["left", "right", "both"]}},
        "required": ["finding", "side"], "additionalProperties": False},
}
SCORES = {  # numbers with ranges
    "type": "object",
    "properties": {"probability": {"type": "number", "minimum": 0, "maximum": 1},
                   "grade": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["probability", "grade"], "additionalProperties": False,
}
SCHEMAS = {"nested": NESTED, "findings": FINDINGS, "scores": SCORES, "boxes": BOXES.schema,
           "cxr_findings": CXR_FINDINGS.schema}


class Vitals(BaseModel):
    heart_rate: int = Field(ge=20, le=250)
    rhythm: Literal["sinus", "af", "flutter"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llamacpp_runs: None) -> Iterator[tuple[str, str, AuditStore]]:
    """`medgem serve` of the 270M GGUF under llama.cpp, as a user runs it: (base URL, served
    model id, its audit store)."""
    from medgem.demo.build import demo_gguf_path

    folder = tmp_path_factory.mktemp("structured-serve")
    audit = folder / "audit.sqlite"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(demo_gguf_path()), "--engine", "llamacpp",
         "--n-ctx", "2048", "--parallel", "2", "--port", str(port), "--audit-db", str(audit)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "MEDGEM_API_KEYS": str(folder / "none.json"), "MEDGEM_CONFIG": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, timeout=180)
        card = httpx.get(base + "/v1/models").json()["data"][0]
        assert card["medgem"]["constrained"] is True  # llama.cpp's grammar sampler (llguidance)
        yield base, card["id"], open_store(audit)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


@pytest.fixture()
def client(served: tuple[str, str, AuditStore]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="local", max_retries=0, timeout=300)


def json_schema(name: str, schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def stream_chat(base: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    """The ``data:`` payloads of a streamed answer, ``[DONE]`` left out."""
    chunks = []
    with httpx.stream("POST", base + path, json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def streamed_parts(chunks: list[dict[str, Any]]) -> tuple[str, str | None, dict[str, Any]]:
    """(content, finish_reason, the final chunk's medgem object) of a streamed answer."""
    content, finish, extra = "", None, {}
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            content += choice["delta"].get("content") or ""
            finish = choice.get("finish_reason") or finish
        extra = chunk.get("medgem") or extra
    return content, finish, extra


def answer_record(store: AuditStore, record_id: str) -> dict[str, Any]:
    record = store.get(record_id)
    assert record is not None and record.kind == "answer"
    return record.body


# --- valid JSON for the schema, streamed and not ------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_strict_answers_validate(name: str, client: openai.OpenAI,
                                             served: tuple[str, str, AuditStore]) -> None:
    constraint = Constraint.from_schema(SCHEMAS[name], name=name)
    whole = client.chat.completions.create(
        model=served[1], messages=[{"role": "user", "content": QUESTION}], max_tokens=200,
        response_format=json_schema(name, SCHEMAS[name]))  # type: ignore[arg-type]
    choice = whole.choices[0]
    assert choice.finish_reason == "stop", choice.message.content  # the JSON closed
    value = constraint.check(choice.message.content or "")
    extra = whole.model_extra["medgem"]  # type: ignore[index]
    assert extra["structured"] == {"kind": "json_schema", "name": name, "sha256": constraint.digest,
                                   "valid": True, "error": None, "parsed": value}
    body = answer_record(served[2], whole.id)
    assert body["output"] == choice.message.content and body["finish_reason"] == "stop"
    assert body["parsed"] == value and body["structured_error"] is None
    assert body["settings"]["constraint"] == constraint.record()


@pytest.mark.parametrize("name", ["nested", "findings"])
def test_streamed_json_schema_answers_validate(name: str, served: tuple[str, str, AuditStore]) -> None:
    base, model, store = served
    chunks = stream_chat(base, {"model": model, "stream": True, "max_tokens": 200,
                                "messages": [{"role": "user", "content": QUESTION}],
                                "response_format": json_schema(name, SCHEMAS[name])})
    content, finish, extra = streamed_parts(chunks)
    assert finish == "stop"
    value = Constraint.from_schema(SCHEMAS[name]).check(content)
    assert extra["structured"]["valid"] is True and extra["structured"]["parsed"] == value
    body = answer_record(store, chunks[0]["id"])
    assert body["output"] == content and body["parsed"] == value


def test_json_object_is_held_to_an_object_and_a_cut_one_is_never_data(
        client: openai.OpenAI, served: tuple[str, str, AuditStore]) -> None:
    """``json_object`` (any object): the base 270M never closes a free-form object by itself (it
    adds keys until the budget ends), so what this shows is the constraint holding every token
    to an object prefix, and the cut answer marked invalid, streamed and not."""
    base, model, _ = served
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=24,  # type: ignore[arg-type]
                                           response_format={"type": "json_object"})
    content = whole.choices[0].message.content or ""
    structured = whole.model_extra["medgem"]["structured"]  # type: ignore[index]
    assert content.startswith('{"') and structured["kind"] == "json_object"
    if whole.choices[0].finish_reason == "stop":  # it closed: a JSON object
        assert isinstance(json.loads(content), dict) and structured["parsed"] == json.loads(content)
    else:
        assert whole.choices[0].finish_reason == "length"
        assert structured["valid"] is False and structured["parsed"] is None
    streamed, finish, extra = streamed_parts(stream_chat(base, {
        "model": model, "stream": True, "max_tokens": 24, "messages": messages,
        "response_format": {"type": "json_object"}}))
    assert streamed == content and finish == whole.choices[0].finish_reason  # greedy: the same
    # a streamed chunk leaves out null fields (parsed, error), as every medgem field
    assert extra["structured"] == {k: v for k, v in structured.items() if v is not None}


def test_text_format_is_free_text(client: openai.OpenAI, served: tuple[str, str, AuditStore]) -> None:
    whole = client.chat.completions.create(model=served[1], messages=[{"role": "user", "content": QUESTION}],  # type: ignore[arg-type]
                                           max_tokens=8, response_format={"type": "text"})
    assert whole.model_extra["medgem"].get("structured") is None  # type: ignore[union-attr]


def test_thinking_on_the_answer_after_the_thought_still_validates(served: tuple[str, str, AuditStore]) -> None:
    """``think`` sends the thinking instruction; the thought (if the model opens one) is free, the
    answer after it is held to the schema."""
    base, model, store = served
    response = httpx.post(base + "/v1/chat/completions", timeout=300, json={
        "model": model, "think": True, "max_tokens": 300,
        "messages": [{"role": "user", "content": QUESTION}],
        "response_format": json_schema("nested", NESTED)})
    assert response.status_code == 200, response.text
    answer = response.json()
    content = answer["choices"][0]["message"]["content"]
    assert Constraint.from_schema(NESTED).check(content) == answer["medgem"]["structured"]["parsed"]
    assert answer_record(store, answer["id"])["settings"]["think"] is True


def test_the_openai_clients_parse_helper_gets_a_pydantic_object(client: openai.OpenAI,
                                                                  served: tuple[str, str, AuditStore]) -> None:
    """``client.chat.completions.parse(response_format=Model)``: the SDK sends a strict
    json_schema and reads the content back into the model itself."""
    parsed = client.chat.completions.parse(model=served[1], messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=120, response_format=Vitals)
    vitals = parsed.choices[0].message.parsed
    assert isinstance(vitals, Vitals) and 20 <= vitals.heart_rate <= 250


def test_api_ask_takes_a_schema_a_builtin_name_and_format_json(served: tuple[str, str, AuditStore]) -> None:
    base, _, store = served
    for field, constraint in (({"schema": SCORES}, Constraint.from_schema(SCORES)),
                              ({"schema": "cxr-findings"}, CXR_FINDINGS)):
        chunks = stream_chat(base, {"question": QUESTION, "max_tokens": 200, **field}, path="/api/ask")
        content, finish, extra = streamed_parts(chunks)
        assert finish == "stop", content
        structured = extra["structured"]
        assert structured["valid"] is True and structured["name"] == constraint.name
        assert structured["parsed"] == constraint.check(content)
        body = answer_record(store, chunks[0]["id"])
        assert body["endpoint"] == "/api/ask" and body["parsed"] == structured["parsed"]
        assert body["settings"]["constraint"]["name"] == constraint.name
    # format "json": any object (this base model never closes a free one: see json_object above)
    content, finish, extra = streamed_parts(stream_chat(
        base, {"question": QUESTION, "max_tokens": 12, "format": "json"}, path="/api/ask"))
    assert content.startswith('{"') and extra["structured"]["kind"] == "json_object"
    assert finish == "length" and extra["structured"]["valid"] is False and "parsed" not in extra["structured"]


# --- a reply the budget cuts ---------------------------------------------------------------------


def test_a_reply_cut_by_max_tokens_is_length_and_invalid(client: openai.OpenAI,
                                                         served: tuple[str, str, AuditStore]) -> None:
    base, model, store = served
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=5,  # type: ignore[arg-type]
                                           response_format=json_schema("boxes", BOXES.schema))
    assert whole.choices[0].finish_reason == "length"
    structured = whole.model_extra["medgem"]["structured"]  # type: ignore[index]
    assert structured["valid"] is False and structured["parsed"] is None
    assert "token budget" in structured["error"] and "max_tokens over HTTP" in structured["error"]
    with pytest.raises(ValueError):
        json.loads(whole.choices[0].message.content or "")
    body = answer_record(store, whole.id)
    assert body["finish_reason"] == "length" and body["parsed"] is None
    assert body["structured_error"] == structured["error"]  # invalid on the record too
    content, finish, extra = streamed_parts(stream_chat(base, {
        "model": model, "stream": True, "max_tokens": 5, "messages": messages,
        "response_format": json_schema("boxes", BOXES.schema)}))
    assert finish == "length" and extra["structured"]["valid"] is False
    assert content == whole.choices[0].message.content  # greedy: the same cut reply
    assert "parsed" not in extra["structured"] and "token budget" in extra["structured"]["error"]
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK's own guard agrees
        client.chat.completions.parse(model=model, messages=messages, max_tokens=5,  # type: ignore[arg-type]
                                      response_format=Vitals)


# --- bad input: a 400 before anything reaches the model ------------------------------------------


BAD_FORMATS = [
    (json_schema("bad", {"type": "nope"}), "invalid_schema", "response_format.json_schema.schema",
     "not a valid JSON schema"),
    (json_schema("pattern", {"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
     "invalid_schema", "response_format.json_schema.schema", "patternProperties at /"),
    (json_schema("nested_not", {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
     "invalid_schema", "response_format.json_schema.schema", "not at /properties/a"),
    ({"type": "xml"}, "invalid_value", "response_format", "'xml'"),
    ({"type": "regex", "regex": "[0-9]+"}, "invalid_value", "response_format", "'regex'"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "invalid_value",
     "response_format.json_schema.json_schema.schema", "Field required"),  # the loc names the tag too
]


@pytest.mark.parametrize(("response_format", "code", "param", "says"), BAD_FORMATS,
                         ids=["invalid", "patternProperties", "not", "xml", "regex", "no-schema"])
def test_bad_response_format_is_a_400_and_nothing_runs(
        response_format: dict[str, Any], code: str, param: str, says: str,
        served: tuple[str, str, AuditStore]) -> None:
    base, model, store = served
    answers = store.count("answer")
    response = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20,
        "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["code"] == code and error["param"] == param
    assert says in error["message"]
    assert store.count("answer") == answers  # nothing reached the model
    assert httpx.get(base + "/healthz").status_code == 200  # and the server keeps serving


def test_bad_schema_on_api_ask_is_a_400(served: tuple[str, str, AuditStore]) -> None:
    base, _, store = served
    answers = store.count("answer")
    for body, code, says in (({"schema": {"type": "string", "format": "email"}}, "invalid_schema", "format 'email'"),
                             ({"schema": "no-such-schema"}, "invalid_schema", "unknown schema name"),
                             ({"schema": SCORES, "format": "json"}, "invalid_value", "not both"),
                             ({"format": "yaml"}, "invalid_value", "'format'")):
        response = httpx.post(base + "/api/ask", json={"question": QUESTION, **body}, timeout=60)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == code and says in error["message"], error
    assert store.count("answer") == answers


def test_a_schema_for_an_engine_that_cannot_constrain_is_refused_before_it_runs() -> None:
    """An engine whose capabilities say it cannot constrain is never asked: never answered
    unconstrained. (A scripted engine: every real engine here constrains.)"""
    engine = ScriptedEngine()
    assert not engine.capabilities.constrained
    from medgem.api import MedGemma

    store = open_store(":memory:")
    model = audited(MedGemma(engine), store)  # type: ignore[arg-type]
    with serve_in_thread(create_app(ServerConfig(), model)) as base:
        before = engine.calls  # the warm-up's
        for path, body, param in (
                ("/v1/chat/completions", {"model": "medgem-test-scripted", "messages": [{"role": "user", "content": "hi"}],
                                          "response_format": {"type": "json_object"}}, "response_format"),
                ("/api/ask", {"question": "hi", "schema": "boxes"}, "schema")):
            response = httpx.post(base + path, json=body, timeout=60)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "unsupported_parameter" and error["param"] == param
            assert "scripted engine" in error["message"] and "cannot constrain" in error["message"]
        assert engine.calls == before and store.count("answer") == 0
        assert store.count("rejected") == 2  # the refusals are on the record
        free = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": "medgem-test-scripted", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "text"}})
        assert free.status_code == 200 and engine.calls == before + 1


def test_a_schema_for_the_pipeline_engine_is_refused_over_http(tiny_text_checkpoint: Path) -> None:
    """transformers' ``pipeline`` path cannot take a logits processor per row: a real engine
    that cannot constrain, refused at the edge with nothing on the record but the refusal."""
    from medgem.api import MedGemma

    store = open_store(":memory:")
    model = MedGemma.load(tiny_text_checkpoint, engine="hf-pipeline",
                          options={"device": "cpu", "progress": False}, audit=False)
    try:
        assert not model.engine.capabilities.constrained
        with serve_in_thread(create_app(ServerConfig(), audited(model, store))) as base:
            answers = store.count("answer")  # the warm-up writes none
            response = httpx.post(base + "/v1/chat/completions", timeout=120, json={
                "model": "medgem-test-text", "messages": [{"role": "user", "content": "hi"}],
                "response_format": json_schema("scores", SCORES)})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "unsupported_parameter" and error["param"] == "response_format"
            assert "hf-pipeline engine" in error["message"]
            assert store.count("answer") == answers and store.count("rejected") == 1
    finally:
        model.close()
