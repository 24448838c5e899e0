"""volume-classification: real CT and MR DICOM series, asked one condition at a time; macro
accuracy and per-condition F1 checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_card_fixtures import (
    check_run_report,
    eval_cli,
    question_of,
    results,
    write_ct,
    write_jsonl,
    write_mr,
)
from medgem.errors import DatasetError
from medgem.evaluate import EvalConfig, prepare, run_evaluation, write_report
from medgem.evaluate.metrics import macro_accuracy
from medgem.request import ImagePart, Request, TextPart
from test_evaluate_runner import model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("volumes")
    write_ct(root / "ct", slices=4)
    write_mr(root / "mr", slices=3)
    return write_jsonl(root / "volumes.jsonl", [
        {"id": "ct1", "series": "ct", "modality": "CT", "labels": {"fracture": 1, "hemorrhage": 0}},
        {"id": "mr1", "series": "mr", "modality": "MR", "condition": "tumour", "label": "no"},
    ])


def test_macro_accuracy_is_the_mean_of_each_groups_accuracy() -> None:
    # a: 2 of 3 right, b: 1 of 1 -> (2/3 + 1) / 2, not the pooled 3/4
    assert macro_accuracy(["a", "a", "a", "b"], [True, True, False, True]) == pytest.approx(5 / 6)
    assert macro_accuracy([], []) == 0.0


def reply(request: Request) -> str:
    # right about the fracture and the hemorrhage, wrong about the tumour
    return {"fracture": "Yes.", "hemorrhage": "No, there is none.", "tumour": "yes"}[
        next(c for c in ("fracture", "hemorrhage", "tumour") if c in question_of(request))]


def test_scores_by_hand_and_the_series_reaches_the_model_as_slices(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    prepared = prepare(EvalConfig(task="volume-classification", data=str(dataset),
                                  benchmark="ct-dataset-1"))
    assert [i.id for i in prepared.items] == ["ct1:fracture", "ct1:hemorrhage", "mr1"]
    run_evaluation(mg, prepared, tmp_path / "run", progress=False)
    ct = next(r for r in engine.requests if "fracture" in question_of(r))
    (user,) = ct.messages  # the volume layout: no system turn, slices, question last
    assert len(ct.images) == 4 and user.parts[2] == TextPart("SLICE 1")
    assert isinstance(user.parts[1], ImagePart)
    assert question_of(ct) == "Does this CT scan show fracture? Answer yes or no."
    mr = next(r for r in engine.requests if "tumour" in question_of(r))
    assert len(mr.images) == 3 and "MRI scan" in question_of(mr)

    report = {k: v["value"] for k, v in
              json.loads(write_report(tmp_path / "run")["json"].read_text())["metrics"].items()}
    # per condition: fracture 1/1, hemorrhage 1/1, tumour 0/1 -> macro accuracy 2/3
    assert report["macro_accuracy"] == pytest.approx(200 / 3)
    # F1 of "present": fracture tp 1 -> 1.0; hemorrhage no positives -> 0; tumour fp 1 -> 0
    assert report["f1_fracture"] == 100.0 and report["f1_hemorrhage"] == 0.0
    assert report["f1_tumour"] == 0.0 and report["macro_f1"] == pytest.approx(100 / 3)
    assert results(tmp_path / "run")["mr1"]["prediction"] == "yes"


def test_a_label_that_is_not_yes_or_no_names_the_row(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [{"series": "x", "condition": "fracture", "label": "maybe"}])
    with pytest.raises(DatasetError, match=r"bad.jsonl row 1: label 'maybe' for 'fracture'"):
        prepare(EvalConfig(task="volume-classification", data=str(data)))


def test_cli_end_to_end_on_the_tiny_vlm(dataset: Path, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("volume-classification", dataset, tiny_vlm_checkpoint, out,
                      "--benchmark", "ct-dataset-1", "--variant", "1.5-4b-it", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "volume-classification: macro_accuracy" in result.stdout
    assert "model card (1.5-4b-it, ct-dataset-1): 61.1" in result.stdout
    report = check_run_report(out, 3, concurrency=2)
    rows = results(out)
    by_condition: dict[str, list[bool]] = {}
    for row in rows.values():
        by_condition.setdefault(row["category"], []).append(row["correct"])
    expected = sum(sum(v) / len(v) for v in by_condition.values()) / len(by_condition)
    assert report["metrics"]["macro_accuracy"]["value"] == pytest.approx(100 * expected)
    assert all(r["prompt_tokens"] > 4 for r in rows.values())  # the slices reached the model


def test_ct_rate_label_csv_is_read_as_it_ships(dataset: Path, tmp_path: Path) -> None:
    csv = tmp_path / "valid_predicted_labels.csv"
    csv.write_text(f"VolumeName,Cardiomegaly,Lung nodule\n{dataset.parent / 'ct'},1,0\n")
    prepared = prepare(EvalConfig(task="volume-classification", data=str(csv), variant="1.5-4b-it"))
    assert prepared.benchmark == "ct-rate"
    assert [i.question for i in prepared.items] == [
        "Does this CT scan show Cardiomegaly? Answer yes or no.",
        "Does this CT scan show Lung nodule? Answer yes or no."]
    mg, _ = model(lambda request: "Yes.", variant="1.5-4b-it")
    run_evaluation(mg, prepared, tmp_path / "run", progress=False)
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    # always "yes": Cardiomegaly tp -> F1 1; Lung nodule fp -> F1 0; the card's CT-RATE metric
    assert report["metrics"]["macro_f1"]["value"] == 50.0
    assert report["model_card"]["metric"] == "macro_f1" and report["model_card"]["value"] == 27.0
