"""longitudinal: prior + current chest X-ray and a change label; macro (balanced) accuracy over
improving / stable / worsening checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_card_fixtures import (
    check_run_report,
    eval_cli,
    question_of,
    results,
    write_jsonl,
    write_png,
)
from medgem.evaluate import EvalConfig, compare_runs, prepare, run_evaluation, write_report
from medgem.evaluate.tasks.longitudinal import read_change
from medgem.request import Request
from test_evaluate_runner import model

PRIOR_SHADE, CURRENT_SHADE = 40, 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("longitudinal")
    write_png(root / "prior.png", PRIOR_SHADE)
    write_png(root / "current.png", CURRENT_SHADE)
    rows = [("effusion", "improving"), ("pneumonia", "stable"), ("edema", "worsened"),
            ("pneumothorax", "no change")]
    return write_jsonl(root / "mscxrt.jsonl", [
        {"id": finding, "prior": "prior.png", "current": "current.png", "finding": finding,
         "label": label} for finding, label in rows])


@pytest.mark.parametrize(("reply", "change"), [
    ("Improving.", "improving"), ("The effusion has worsened.", "worsening"),
    ("**Stable**, no change", "stable"), ("Unchanged.", "stable"), ("I cannot tell.", None),
])
def test_read_change(reply: str, change: str | None) -> None:
    assert read_change(reply) == change


REPLIES = {"effusion": "Improving.", "pneumonia": "It is worse.", "edema": "worsening",
           "pneumothorax": "No change."}


def reply(request: Request) -> str:
    return next(r for finding, r in REPLIES.items() if finding in question_of(request))


def test_scores_by_hand_and_the_prior_goes_first(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    prepared = prepare(EvalConfig(task="longitudinal", data=str(dataset), benchmark="ms-cxr-t"))
    assert [i.reference for i in prepared.items] == ["improving", "stable", "worsening", "stable"]
    run_evaluation(mg, prepared, tmp_path / "run", progress=False)
    first = engine.requests[0]
    assert [im.image.getpixel((im.image.width // 2, im.image.height // 2))[0] for im in first.images] == [PRIOR_SHADE, CURRENT_SHADE]
    assert question_of(first).startswith("The first image is the prior chest X-ray")
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    # right: effusion, edema, pneumothorax; wrong: pneumonia (stable read as worsening)
    # per class: improving 1/1, stable 1/2, worsening 1/1 -> (1 + 0.5 + 1) / 3
    assert report["metrics"]["macro_accuracy"]["value"] == pytest.approx(250 / 3)
    assert report["metrics"]["accuracy"]["value"] == 75.0
    assert report["metrics"]["accuracy_stable"]["value"] == 50.0
    assert report["model_card"]["value"] == 65.7 and report["model_card_comparable"]
    assert results(tmp_path / "run")["pneumonia"]["prediction"] == "worsening"


def test_cli_end_to_end_on_the_tiny_vlm(dataset: Path, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("longitudinal", dataset, tiny_vlm_checkpoint, out, "--benchmark", "ms-cxr-t",
                      "--variant", "1.5-4b-it")
    assert result.returncode == 0, result.stderr
    assert "longitudinal: macro_accuracy" in result.stdout
    report = check_run_report(out, 4)
    rows = list(results(out).values())
    by_class: dict[str, list[bool]] = {}
    for row in rows:
        by_class.setdefault(row["reference"], []).append(row["correct"])
    expected = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    assert report["metrics"]["macro_accuracy"]["value"] == pytest.approx(100 * expected)


def test_compare_two_runs_is_mcnemar(dataset: Path, tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="longitudinal", data=str(dataset)))
    for name, answer in (("a", reply), ("b", lambda request: "Stable.")):
        mg, _ = model(answer, variant="1.5-4b-it")
        run_evaluation(mg, prepared, tmp_path / name, progress=False)
    compared = compare_runs(tmp_path / "a", tmp_path / "b")
    # A right on effusion, edema, pneumothorax; B ("stable" always) on pneumonia, pneumothorax
    assert compared["test"] == "exact McNemar"
    assert (compared["only_a_correct"], compared["only_b_correct"]) == (2, 1)
    assert compared["difference"] == pytest.approx(-25.0)
