"""boxes: an image, a structure and its reference box; IoU (read through answer/boxes.py's
parser) and the IoU>0.5 rate checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_card_fixtures import (
    check_constraint,
    check_run_report,
    eval_cli,
    question_of,
    results,
    write_jsonl,
    write_png,
)
from medgem.errors import DatasetError, InputError
from medgem.evaluate import EvalConfig, compare_runs, prepare, run_evaluation, write_report
from medgem.evaluate.metrics import box_iou
from medgem.evaluate.tasks.boxes import predicted_box
from medgem.request import Request
from medgem.structured.builtin import BOXES
from test_evaluate_runner import model


def test_box_iou_by_hand() -> None:
    assert box_iou([100, 100, 300, 300], [100, 100, 300, 300]) == 1.0
    # overlap 100 x 100; union 200*200 + 200*200 - 100*100 = 70000
    assert box_iou([0, 0, 200, 200], [100, 100, 300, 300]) == pytest.approx(10000 / 70000)
    assert box_iou([0, 0, 100, 100], [200, 200, 300, 300]) == 0.0
    # (y0, x0, y1, x1): a 100-tall, 400-wide box against a 400-tall, 100-wide one: 100*100 shared
    assert box_iou([0, 0, 100, 400], [0, 0, 400, 100]) == pytest.approx(10000 / 70000)
    assert box_iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0


def test_predicted_box_picks_the_labelled_box_on_the_0_1000_square() -> None:
    reply = ('```json\n[{"box_2d": [10, 20, 30, 40], "label": "left lung"},\n'
             ' {"box_2d": [500, 600, 1200, 700], "label": "Right Lung"},]\n```')
    assert predicted_box(reply, "right lung") == [500.0, 600.0, 1000.0, 700.0]  # clipped at 1000
    assert predicted_box(reply, "heart") == [10.0, 20.0, 30.0, 40.0]  # no match: the first box
    assert predicted_box("The right lung is on the left of the image.", "right lung") is None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("boxes")
    write_png(root / "cxr.png", 90, size=(80, 60))
    return write_jsonl(root / "imagenome.jsonl", [
        {"id": "exact", "image": "cxr.png", "label": "right lung", "box": [100, 100, 300, 300]},
        {"id": "partial", "image": "cxr.png", "label": "left lung", "box_2d": [0, 0, 200, 200]},
        {"id": "none", "image": "cxr.png", "label": "trachea", "bbox": [400, 450, 600, 550]},
    ])


def reply(request: Request) -> str:
    question = question_of(request)
    if "trachea" in question:
        return "It is in the middle."
    label = "right lung" if "right lung" in question else "left lung"
    return f'```json\n[{{"box_2d": [100, 100, 300, 300], "label": "{label}"}}]\n```'


def test_scores_by_hand(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    run_evaluation(mg, prepare(EvalConfig(task="boxes", data=str(dataset), benchmark="chest-imagenome")),
                   tmp_path / "run", progress=False)
    assert len(engine.requests[0].images) == 1
    assert '"box_2d": [y0, x0, y1, x1]' in question_of(engine.requests[0])
    assert all(r.options.constraint is None for r in engine.requests)  # the engine cannot constrain
    paths = write_report(tmp_path / "run")
    report = json.loads(paths["json"].read_text())
    # IoU 1, 1/7, 0 (no box: unparseable) -> mean 8/21; one of three above 0.5
    assert report["metrics"]["iou"]["value"] == pytest.approx(100 * 8 / 21)
    assert report["metrics"]["iou_above_50"]["value"] == pytest.approx(100 / 3)
    assert report["n_unparseable"] == 1 and report["model_card"]["value"] == 38.0
    assert results(tmp_path / "run")["partial"]["score"] == pytest.approx(1 / 7)
    assert report["run"]["constraint"] == "none"
    check_constraint(report, paths["markdown"].read_text(), BOXES)


def constrained_reply(request: Request) -> str:
    """What decoding constrained to BOXES gives: bare JSON, a box even where free text had none."""
    question = question_of(request)
    label = next(name for name in ("right lung", "left lung", "trachea") if name in question)
    box = [0, 0, 10, 10] if label == "trachea" else [100, 100, 300, 300]
    return json.dumps([{"box_2d": box, "label": label}])


def test_an_engine_that_constrains_gets_the_boxes_schema_and_the_report_says_so(
        dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(constrained_reply, variant="1.5-4b-it", constrained=True)
    run_evaluation(mg, prepare(EvalConfig(task="boxes", data=str(dataset), benchmark="chest-imagenome")),
                   tmp_path / "run", progress=False)
    assert [r.options.constraint for r in engine.requests] == [BOXES] * 3
    assert '"box_2d": [y0, x0, y1, x1]' in question_of(engine.requests[0])  # the official prompt
    paths = write_report(tmp_path / "run")
    report = json.loads(paths["json"].read_text())
    # IoU 1, 1/7, 0 (a box far from the trachea's: parsed, no overlap) -> mean 8/21
    assert report["metrics"]["iou"]["value"] == pytest.approx(100 * 8 / 21)
    assert report["metrics"]["iou_above_50"]["value"] == pytest.approx(100 / 3)
    assert report["n_unparseable"] == 0
    assert report["run"]["constraint"]["name"] == "boxes"
    check_constraint(report, paths["markdown"].read_text(), BOXES)
    # a resumed run must be the same experiment: not constrained one session and free the next
    free, _ = model(constrained_reply, variant="1.5-4b-it")
    with pytest.raises(InputError, match="different constraint"):
        run_evaluation(free, prepare(EvalConfig(task="boxes", data=str(dataset), benchmark="chest-imagenome")),
                       tmp_path / "run", resume=True, progress=False)


def test_a_box_outside_0_1000_names_the_row(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [{"image": "x.png", "label": "heart", "box": [0, 0, 1200, 50]}])
    with pytest.raises(DatasetError, match=r"bad.jsonl row 1: box \[0, 0, 1200, 50\] is not"):
        prepare(EvalConfig(task="boxes", data=str(data)))


def test_cli_end_to_end_on_the_tiny_vlm(dataset: Path, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("boxes", dataset, tiny_vlm_checkpoint, out, "--benchmark", "chest-imagenome",
                      "--variant", "1.5-4b-it")
    assert result.returncode == 0, result.stderr
    assert "boxes: iou" in result.stdout
    report = check_run_report(out, 3, schema=BOXES)
    scores = [r["score"] for r in results(out).values()]
    assert report["run"]["constraint"]["name"] == "boxes"  # transformers constrains decoding
    # in 4 tokens a reply is valid JSON for the schema (an empty list fits) or cut and marked so
    for row in results(out).values():
        assert ("token budget" in row["structured_error"] if "structured_error" in row
                else BOXES.result(row["reply"]).valid), row
    assert report["metrics"]["iou"]["value"] == pytest.approx(100 * sum(scores) / 3)


def test_compare_two_runs_pairs_the_ious(dataset: Path, tmp_path: Path) -> None:
    prepared = prepare(EvalConfig(task="boxes", data=str(dataset)))
    for name, answer in (("a", reply), ("b", lambda request: "no box")):
        mg, _ = model(answer, variant="1.5-4b-it")
        run_evaluation(mg, prepared, tmp_path / name, progress=False)
    compared = compare_runs(tmp_path / "a", tmp_path / "b")
    assert compared["test"] == "paired bootstrap (mean per-item score)" and compared["paired_items"] == 3
    assert compared["difference"] == pytest.approx(-100 * 8 / 21)  # B - A: IoUs (0, 0, 0) - (1, 1/7, 0)
