"""ehrqa: a patient record (text, or a FHIR bundle rendered to text) and a question; the FHIR
renderer's exact text and accuracy checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval_card_fixtures import check_run_report, eval_cli, results, write_jsonl
from medgem.errors import DatasetError, InputError
from medgem.evaluate import EvalConfig, prepare, run_evaluation, write_report
from medgem.evaluate.fhir_text import render_bundle
from medgem.request import Request
from test_evaluate_runner import model, user_text


def bundle() -> dict[str, Any]:
    def entry(resource: dict[str, Any]) -> dict[str, Any]:
        return {"resource": resource}

    return {"resourceType": "Bundle", "type": "collection", "entry": [
        entry({"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jane"]}],
               "identifier": [{"value": "MRN-99887766"}], "gender": "female",
               "birthDate": "1951-04-17"}),
        entry({"resourceType": "Observation", "code": {"text": "HbA1c"},
               "valueQuantity": {"value": 7.2, "unit": "%"}, "effectiveDateTime": "2024-03-02T10:00:00Z",
               "interpretation": [{"coding": [{"code": "H", "display": "High"}]}], "status": "final"}),
        entry({"resourceType": "Observation", "code": {"coding": [{"display": "HbA1c"}]},
               "valueQuantity": {"value": 8.1, "unit": "%"}, "effectiveDateTime": "2023-01-10"}),
        entry({"resourceType": "Condition", "code": {"text": "Type 2 diabetes mellitus"},
               "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2015-06-01"}),
        entry({"resourceType": "MedicationRequest", "medicationCodeableConcept": {"text": "Metformin 500 mg"},
               "dosageInstruction": [{"text": "twice daily"}], "authoredOn": "2020-02-02", "status": "active"}),
        entry({"resourceType": "AllergyIntolerance", "code": {"text": "Penicillin"},
               "reaction": [{"manifestation": [{"text": "rash"}]}]}),
        entry({"resourceType": "Encounter", "type": [{"text": "Outpatient visit"}],
               "period": {"start": "2024-03-02T09:00:00Z"}, "status": "finished"}),
    ]}


def test_render_bundle_exactly_and_without_names_or_identifiers() -> None:
    assert render_bundle(bundle()) == (
        "Patient:\n- gender female, born 1951-04-17\n\n"
        "Conditions:\n- 2015-06-01: Type 2 diabetes mellitus; active\n\n"
        "Medications:\n- 2020-02-02: Metformin 500 mg; twice daily; active\n\n"
        "Allergies:\n- Penicillin; rash\n\n"
        "Observations:\n- 2023-01-10: HbA1c; 8.1 %\n- 2024-03-02: HbA1c; 7.2 %; High; final\n\n"
        "Encounters:\n- 2024-03-02: Outpatient visit; finished"
    )


def test_render_bundle_refuses_what_is_not_a_bundle() -> None:
    with pytest.raises(InputError, match="not a FHIR Bundle"):
        render_bundle({"resourceType": "Patient"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ehrqa")
    (root / "patient.json").write_text(json.dumps(bundle()))
    return write_jsonl(root / "ehrqa.jsonl", [
        {"id": "text", "record": "Medications: metformin 500 mg twice daily.",
         "question": "Is the patient on metformin?", "answer": "yes"},
        {"id": "bundle-file", "bundle": "patient.json", "question": "What was the latest HbA1c?",
         "answer": "7.2 %"},
        {"id": "bundle-inline", "bundle": bundle(), "question": "Which condition is active?",
         "options": ["Asthma", "Type 2 diabetes mellitus"], "answer": "Type 2 diabetes mellitus"},
    ])


def reply(request: Request) -> str:
    text = user_text(request)
    if "metformin?" in text:
        return "Yes, metformin 500 mg twice daily."
    if "HbA1c?" in text:
        return "Answer: 7.2%"
    return "(A)"  # wrong: B


def test_scores_by_hand_and_the_record_is_in_the_prompt(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    run_evaluation(mg, prepare(EvalConfig(task="ehrqa", data=str(dataset), benchmark="ehrqa")),
                   tmp_path / "run", progress=False)
    prompts = [user_text(r) for r in engine.requests]
    assert any("- 2024-03-02: HbA1c; 7.2 %" in p and p.endswith("What was the latest HbA1c?")
               for p in prompts)
    assert not any("Doe" in p or "MRN-99887766" in p for p in prompts)
    assert any("(B) Type 2 diabetes mellitus" in p for p in prompts)
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(200 / 3)
    assert report["model_card"]["value"] == 89.6
    rows = results(tmp_path / "run")
    assert rows["bundle-inline"]["reference"] == "B" and rows["bundle-inline"]["prediction"] == "A"
    assert rows["bundle-file"]["correct"] is True


def test_a_bundle_that_is_not_json_names_the_row(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [{"bundle": "{not json", "question": "q", "answer": "a"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl row 1: the FHIR bundle is not valid JSON"):
        prepare(EvalConfig(task="ehrqa", data=str(data)))


def test_cli_end_to_end_on_the_tiny_text_model(dataset: Path, tiny_text_checkpoint: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("ehrqa", dataset, tiny_text_checkpoint, out, "--variant", "1.5-4b-it",
                      "--benchmark", "ehrqa", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert "ehrqa: accuracy" in result.stdout and "model card (1.5-4b-it, ehrqa): 89.6" in result.stdout
    report = check_run_report(out, 3, concurrency=3)
    correct = [r["correct"] for r in results(out).values()]
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(100 * sum(correct) / 3)
