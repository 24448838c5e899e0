"""Every surface writes the audit record of every answer, through MedGemma's one audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from medgem import MedGemma
from medgem.audit import open_store
from medgem.errors import ContextLengthError, UnsupportedInputError


def test_cli_ask_leaves_a_verified_record(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    image = tmp_path / "xray.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(image)
    result = run_cli("ask", "--model", str(tiny_vlm_checkpoint), "--image", str(image),
                     "--max-new-tokens", "3", "--audit-db", str(db), "--json", "Describe this")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    store = open_store(db)
    try:
        record = store.get(answer["audit_id"])
        assert record is not None and record.kind == "answer"
        body = record.body
        assert body["endpoint"] == "cli:ask" and body["output"] == answer["answer"]
        assert body["model"]["id"] == "medgem-test-vlm" and body["settings"]["max_new_tokens"] == 3
        # hashes of the inputs, never the inputs: the text's digest and the image's pixels'
        parts = body["inputs"][-1]["parts"]
        assert [p["type"] for p in parts] == ["image", "text"]
        assert all(len(p["sha256"]) == 64 for p in parts) and "Describe" not in json.dumps(body["inputs"])
        assert store.verify().ok and store.count() == 1
    finally:
        store.close()


def test_no_audit_is_explicit_and_writes_nothing(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    result = run_cli("ask", "--model", str(tiny_text_checkpoint), "--max-new-tokens", "2",
                     "--no-audit", "Hi", env={"MEDGEM_AUDIT_DB": str(db)})
    assert result.returncode == 0, result.stderr
    assert "audit off (--no-audit)" in result.stderr and "audit " not in result.stderr.splitlines()[-1]
    assert not db.exists()


def test_python_api_records_answers_and_failures(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    model = MedGemma.load(tiny_text_checkpoint, engine="hf", options={"progress": False}, audit=db)
    try:
        answer = model.ask("What is sepsis?", max_new_tokens=2)
        with pytest.raises(UnsupportedInputError) as refused:
            model.ask("Describe", images=[Image.new("RGB", (8, 8))])
        with pytest.raises(ContextLengthError) as too_long:
            model.ask("word " * 5000, max_new_tokens=2)
    finally:
        model.close()
    store = open_store(db)
    try:
        records = {r.id: r for r in store.records()}
        assert records[answer.audit_id].kind == "answer"  # type: ignore[index]
        assert records[answer.audit_id].body["endpoint"] == "python"  # type: ignore[index]
        for error in (refused.value, too_long.value):
            record = records[error.audit_id]  # type: ignore[attr-defined]
            assert record.kind == "rejected" and record.body["status"] == 400
            assert record.body["error"]["message"] == error.one_line()
        assert store.verify().ok and len(records) == 3
    finally:
        store.close()


def test_a_store_that_cannot_open_is_said_before_the_model_loads(
        tiny_text_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MedGemma.load(audit=<a path under a file>) loaded the whole model, then failed: the
    store is opened first, so a typo costs no load."""
    import medgem.api
    from medgem.errors import InputError

    loads: list[object] = []
    real = medgem.api.load_engine
    monkeypatch.setattr(medgem.api, "load_engine", lambda *a, **k: loads.append(a) or real(*a, **k))
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(InputError, match="cannot open the audit store"):
        MedGemma.load(tiny_text_checkpoint, engine="hf", options={"progress": False}, audit=a_file / "x.sqlite")
    assert loads == []


def test_a_question_that_is_not_text_is_one_input_error(tiny_text_checkpoint: Path) -> None:
    """ask(None) was an AttributeError from deep inside the prompt builder."""
    from medgem.errors import InputError

    model = MedGemma.load(tiny_text_checkpoint, engine="hf", options={"progress": False}, audit=False)
    try:
        for question in (None, 42, ["What is sepsis?"]):
            with pytest.raises(InputError, match="the question must be text"):
                model.ask(question)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="the question is empty — write what"):
            model.ask("  ")
    finally:
        model.close()
