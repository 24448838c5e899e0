"""Structured answers through the surfaces: the Python API's ``schema=``, the Answer's parsed
object and the audit record, the CLI's --json-schema / --format json, and bad input refused in
one line before anything reaches the model. The tiny real checkpoints (random weights) answer:
garbage, but valid JSON for the schema, because decoding was constrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from conftest import run_cli
from medgem.api import MedGemma
from medgem.audit import open_store
from medgem.errors import SchemaError, UnsupportedInputError
from medgem.structured import Constraint

pytest.importorskip("torch")
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {"level": {"enum": ["green", "yellow", "red"]},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["level", "age"], "additionalProperties": False,
}


class Triage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["green", "yellow", "red"]
    admit: bool
    beds: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def model(tiny_text_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> MedGemma:
    db = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    model = MedGemma.load(tiny_text_checkpoint, engine="hf", options={"progress": False}, audit=db)
    model.db_path = db  # type: ignore[attr-defined]
    yield model
    model.close()


def test_api_schema_dict_gives_the_parsed_object_and_audits_it(model: MedGemma) -> None:
    answer = model.ask("Triage this patient.", schema=SCHEMA, max_new_tokens=60)
    assert answer.finish_reason == "stop" and answer.structured_error is None
    assert answer.parsed == json.loads(answer.text)
    assert answer.parsed["level"] in ("green", "yellow", "red") and 0 <= answer.parsed["age"] <= 120
    assert answer.to_dict()["parsed"] == answer.parsed
    store = open_store(model.db_path)  # type: ignore[attr-defined]
    try:
        body = store.get(answer.audit_id).body  # type: ignore[arg-type, union-attr]
        assert body["parsed"] == answer.parsed and body["structured_error"] is None
        constraint = body["settings"]["constraint"]
        assert constraint["kind"] == "json_schema" and constraint["schema"] == SCHEMA
        assert constraint["sha256"] == Constraint.from_schema(SCHEMA).digest
    finally:
        store.close()


def test_api_schema_pydantic_class_and_json(model: MedGemma) -> None:
    answer = model.ask("Triage.", schema=Triage, max_new_tokens=60)
    assert answer.structured_error is None and Triage.model_validate(answer.parsed)
    chat = model.chat([{"role": "user", "content": "Triage."}], schema=Triage, max_new_tokens=60)
    assert chat.parsed is not None and Triage.model_validate(chat.parsed)


def test_api_budget_cut_is_marked_invalid_never_data(model: MedGemma) -> None:
    answer = model.ask("Triage.", schema=SCHEMA, max_new_tokens=3)
    assert answer.finish_reason == "length" and answer.parsed is None
    assert "token budget" in (answer.structured_error or "")
    store = open_store(model.db_path)  # type: ignore[attr-defined]
    try:
        body = store.get(answer.audit_id).body  # type: ignore[arg-type, union-attr]
        assert body["parsed"] is None and "token budget" in body["structured_error"]
    finally:
        store.close()


def test_api_refuses_bad_schemas_before_anything_runs(model: MedGemma) -> None:
    with pytest.raises(SchemaError, match="patternProperties"):
        model.ask("Hi", schema={"type": "object", "patternProperties": {"a": {}}})
    with pytest.raises(SchemaError, match="unknown schema name"):
        model.ask("Hi", schema="yaml")


def test_engine_that_cannot_constrain_refuses(tiny_text_checkpoint: Path) -> None:
    pipeline = MedGemma.load(tiny_text_checkpoint, engine="hf-pipeline",
                             options={"progress": False}, audit=False)
    try:
        with pytest.raises(UnsupportedInputError, match="cannot constrain"):
            pipeline.ask("Hi", schema=SCHEMA, max_new_tokens=5)
    finally:
        pipeline.close()


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_json_schema_file(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    schema = tmp_path / "triage.json"
    schema.write_text(json.dumps(SCHEMA))
    result = run_cli("ask", "Triage this patient.", "--model", str(tiny_text_checkpoint),
                     "--engine", "hf", "--json-schema", str(schema), "--max-new-tokens", "60",
                     "--no-audit", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["structured_error"] is None and answer["parsed"] == json.loads(answer["answer"])
    assert Constraint.from_schema(SCHEMA).result(answer["answer"]).valid


def test_cli_format_json_and_a_cut_answer_exits_non_zero(tiny_text_checkpoint: Path) -> None:
    cut = run_cli("ask", "Triage.", "--model", str(tiny_text_checkpoint), "--engine", "hf",
                  "--format", "json", "--max-new-tokens", "3", "--no-audit")
    assert cut.returncode == 1
    assert "not valid JSON for the schema: the answer hit the token budget" in cut.stderr
    assert cut.stdout.lstrip().startswith("{")  # what came, constrained from the first token


@pytest.mark.parametrize(("flags", "message"), [
    (["--json-schema", "{missing}"], "--json-schema: no file"),
    (["--json-schema", "{bad_json}"], "is not JSON"),
    (["--json-schema", "{pattern}"], "patternProperties at /"),
    (["--json-schema", "{remote}"], "$ref to a remote URL"),
    (["--json-schema", "boxes", "--format", "json"], "two constraints"),
    (["--json-schema", "boxes", "--engine", "hf-pipeline"], "cannot constrain"),
])
def test_cli_bad_schemas_are_one_line_before_the_model_loads(
        tmp_path: Path, flags: list[str], message: str) -> None:
    files = {"missing": tmp_path / "nope.json", "bad_json": tmp_path / "bad.json",
             "pattern": tmp_path / "pattern.json", "remote": tmp_path / "remote.json"}
    files["bad_json"].write_text("{not json")
    files["pattern"].write_text(json.dumps({"type": "object", "patternProperties": {"^a": {}}}))
    files["remote"].write_text(json.dumps({"$ref": "https://example.org/s.json"}))
    flags = [f.format(**{k: str(v) for k, v in files.items()}) if f.startswith("{") else f for f in flags]
    # A model path that does not exist: had anything tried to load it, the error would say so.
    result = run_cli("ask", "Hi", "--model", str(tmp_path / "no-model"), "--no-audit", *flags)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
