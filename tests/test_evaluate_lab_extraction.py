"""lab-extraction: a real PDF and a PNG lab report and their expected values; field-level
macro / micro F1 with number and unit normalisation checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_card_fixtures import (
    check_constraint,
    check_run_report,
    eval_cli,
    results,
    write_jsonl,
    write_png,
)
from medgem.evaluate import EvalConfig, prepare, run_evaluation, write_report
from medgem.evaluate.extract import first_json_value
from medgem.evaluate.metrics import f1_counts, match_counts
from medgem.evaluate.tasks.lab_extraction import facts, lab_values, normalize_number, normalize_unit
from medgem.request import Request
from medgem.structured.builtin import LAB_VALUES
from test_evaluate_runner import model

wsi_fixtures = pytest.importorskip("wsi_fixtures")
pytest.importorskip("pypdfium2")


@pytest.mark.parametrize(("text", "number"), [
    ("13.20", "13.2"), ("140", "140"), ("140.0", "140"), ("1,234", "1234"), ("4,1", "4.1"),
    ("<0.5", "<0.5"), (">= 5", ">=5"), ("positive", None), ("", None),
])
def test_normalize_number(text: str, number: str | None) -> None:
    assert normalize_number(text) == number


@pytest.mark.parametrize(("unit", "same_as"), [
    ("mmol/L", "mmol/l"), ("µg/dL", "ug/dl"), ("mcg/dL", "ug/dl"), ("x10^9/L", "10^9/l"),
    ("10*9/L", "10^9/l"), ("IU/L", "u/l"), ("g / dL", "g/dl"),
])
def test_normalize_unit(unit: str, same_as: str) -> None:
    assert normalize_unit(unit) == same_as


def test_first_json_value_reads_prose_fences_and_trailing_commas() -> None:
    assert first_json_value('Here you are:\n```json\n[{"a": 1},]\n```') == [{"a": 1}]
    assert first_json_value('The values are {"b": [1, 2]} as shown.') == {"b": [1, 2]}
    assert first_json_value('<unused94>thought\n{"draft": 1}<unused95>["final"]') == ["final"]
    assert first_json_value('[{"cut": ') is None and first_json_value("no json") is None


def test_lab_values_accept_the_shapes_models_write() -> None:
    canonical = [{"name": "Sodium", "value": 140, "unit": "mmol/L"}]
    assert lab_values({"lab_values": canonical}) == canonical
    assert lab_values([{"test": "Sodium", "result": 140, "units": "mmol/L"}]) == canonical
    assert lab_values({"Sodium": {"value": 140, "unit": "mmol/L"}}) == canonical
    assert lab_values({"Sodium": 140}) == [{"name": "Sodium", "value": 140}]
    assert lab_values("text") == []


EXPECTED_PDF = [{"name": "Haemoglobin", "value": "13.2", "unit": "g/dL"},
                {"name": "Sodium", "value": 140, "unit": "mmol/L"}]
EXPECTED_PNG = [{"name": "Potassium", "value": 4.1, "unit": "mmol/L"}]
REPLY_PDF = ('```json\n[{"test": "haemoglobin", "result": "13.20", "units": "g/dl"},\n'
             ' {"name": "Sodium", "value": "141", "unit": "mmol/l", "flag": "H"}]\n```')


def test_field_facts_by_hand() -> None:
    expected = lab_values(EXPECTED_PDF)
    predicted = lab_values(first_json_value(REPLY_PDF))
    fields = ["name", "unit", "value"]
    # haemoglobin: name, value, unit all match; sodium: name and unit match, value 141 != 140;
    # the reply's extra "flag" is not a field the reference gives, so it costs nothing
    assert match_counts(facts(predicted, fields), facts(expected)) == (5, 1, 1)
    assert f1_counts(5, 1, 1) == pytest.approx(10 / 12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labs")
    wsi_fixtures.write_pdf(root / "labs.pdf", ["Haemoglobin 13.2 g/dL", "Sodium 140 mmol/L"])
    write_png(root / "labs.png", 250, size=(120, 160))
    return write_jsonl(root / "labs.jsonl", [
        {"id": "pdf", "document": "labs.pdf", "expected": EXPECTED_PDF},
        {"id": "png", "document": "labs.png", "expected": {"lab_values": EXPECTED_PNG}},
    ])


def reply(request: Request) -> str:
    return REPLY_PDF if len(request.images) == 2 else "Potassium is normal."


def test_scores_by_hand_and_the_pdf_pages_reach_the_model(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    run_evaluation(mg, prepare(EvalConfig(task="lab-extraction", data=str(dataset),
                                          benchmark="lab-report-pdf")), tmp_path / "run", progress=False)
    assert sorted(len(r.images) for r in engine.requests) == [1, 2]  # two PDF pages, one PNG
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    # pdf: tp 5, fp 1, fn 1 -> 10/12; png: no JSON -> 0 (tp 0, fn 3)
    assert report["metrics"]["macro_f1"]["value"] == pytest.approx(100 * (10 / 12) / 2)
    # pooled: tp 5, fp 1, fn 4 -> 10 / 15
    assert report["metrics"]["micro_f1"]["value"] == pytest.approx(100 * 10 / 15)
    assert report["model_card"]["value"] == 91.0 and report["run"]["constraint"] == "none"
    assert all(r.options.constraint is None for r in engine.requests)  # the engine cannot constrain
    check_constraint(report, (tmp_path / "run" / "report.md").read_text(), LAB_VALUES)
    rows = results(tmp_path / "run")
    assert rows["pdf"]["category"] == "pdf" and rows["png"]["category"] == "image"
    assert rows["png"]["parsed"] is False


def test_cli_end_to_end_on_the_tiny_vlm(dataset: Path, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("lab-extraction", dataset, tiny_vlm_checkpoint, out, "--benchmark", "lab-report-pdf")
    assert result.returncode == 0, result.stderr
    assert "lab-extraction: macro_f1" in result.stdout and "note: replies read as" in result.stdout
    report = check_run_report(out, 2, schema=LAB_VALUES)
    assert report["run"]["constraint"]["name"] == "lab_values"  # transformers constrains decoding
    scores = [r["score"] for r in results(out).values()]
    assert report["metrics"]["macro_f1"]["value"] == pytest.approx(100 * sum(scores) / 2)


def constrained_reply(request: Request) -> str:
    """What decoding constrained to LAB_VALUES gives: bare JSON in the schema's keys."""
    if len(request.images) == 2:
        return json.dumps([{"name": "haemoglobin", "value": "13.20", "unit": "g/dl"},
                           {"name": "Sodium", "value": "141", "unit": "mmol/l", "flag": "H"}])
    return json.dumps([])


def test_an_engine_that_constrains_gets_the_lab_values_schema_and_the_report_says_so(
        dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(constrained_reply, variant="1.5-4b-it", constrained=True)
    run_evaluation(mg, prepare(EvalConfig(task="lab-extraction", data=str(dataset),
                                          benchmark="lab-report-pdf")), tmp_path / "run", progress=False)
    assert [r.options.constraint for r in engine.requests] == [LAB_VALUES] * 2
    assert all(LAB_VALUES.check(constrained_reply(r)) is not None for r in engine.requests)
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    # the same facts as the free-text run: pdf 10/12, png 0 (an empty list: nothing found)
    assert report["metrics"]["macro_f1"]["value"] == pytest.approx(100 * (10 / 12) / 2)
    assert report["metrics"]["micro_f1"]["value"] == pytest.approx(100 * 10 / 15)
    assert report["run"]["constraint"]["name"] == "lab_values"
    assert report["run"]["constraint"]["schema"] == LAB_VALUES.schema
    check_constraint(report, (tmp_path / "run" / "report.md").read_text(), LAB_VALUES)
