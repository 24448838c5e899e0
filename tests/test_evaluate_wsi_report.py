"""wsi-report: a real pyramidal slide and its reference report; ROUGE-L checked against a
hand-computed value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_card_fixtures import check_run_report, eval_cli, question_of, results, write_jsonl
from medgem.evaluate import EvalConfig, prepare, run_evaluation, write_report
from medgem.evaluate.metrics import rouge_l
from medgem.request import Request
from medgem.request.compose import PATHOLOGY_INSTRUCTION
from test_evaluate_runner import model

pytest.importorskip("openslide")
wsi_fixtures = pytest.importorskip("wsi_fixtures")

REFERENCE = "adenocarcinoma of the colon"


def test_rouge_l_by_hand() -> None:
    # reference tokens: adenocarcinoma of the colon (4); reply: colon adenocarcinoma (2);
    # longest common subsequence 1 -> P 1/2, R 1/4, F = 2 * 1/8 / (3/4) = 1/3
    assert rouge_l("colon adenocarcinoma", REFERENCE) == pytest.approx(1 / 3)
    assert rouge_l("adenocarcinoma of the colon", REFERENCE) == 1.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wsi")
    grid = (2, 2)  # 2 x 2 cells of 224 px at 4 um/px: four 896-px patches at 10x
    image = wsi_fixtures.slide_pixels(grid, 224, [(0, 0), (1, 0), (0, 1), (1, 1)])
    wsi_fixtures.write_aperio(root / "slide.svs", image, mpp=4.0, factors=(1, 4), compression="zlib")
    return write_jsonl(root / "slides.jsonl", [
        {"id": "s1", "slide": "slide.svs", "report": REFERENCE, "prompt": "colon, biopsy:",
         "tissue": "Colon"},
        {"id": "s2", "slide": "slide.svs", "report": "benign colonic mucosa", "tissue": "colon"},
    ])


def reply(request: Request) -> str:
    return "colon adenocarcinoma" if "biopsy" in question_of(request) else "   "


def test_scores_by_hand_and_the_patches_reach_the_model(dataset: Path, tmp_path: Path) -> None:
    mg, engine = model(reply, variant="1.5-4b-it")
    run_evaluation(mg, prepare(EvalConfig(task="wsi-report", data=str(dataset), benchmark="wsi-path")),
                   tmp_path / "run", progress=False)
    first = next(r for r in engine.requests if "biopsy" in question_of(r))
    assert len(first.images) == 4
    assert PATHOLOGY_INSTRUCTION in first.messages[-1].text
    report = json.loads(write_report(tmp_path / "run")["json"].read_text())
    # s1: 1/3; s2: an empty reply -> 0 (unparseable)
    assert report["metrics"]["rouge_l"]["value"] == pytest.approx(100 / 6)
    assert report["model_card"]["value"] == 49.4 and report["n_unparseable"] == 1
    assert [c["category"] for c in report["categories"]] == ["colon"]


def test_cli_end_to_end_on_the_tiny_vlm(dataset: Path, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("wsi-report", dataset, tiny_vlm_checkpoint, out, "--benchmark", "wsi-path",
                      "--variant", "1.5-4b-it")
    assert result.returncode == 0, result.stderr
    assert "wsi-report: rouge_l" in result.stdout
    report = check_run_report(out, 2)
    rows = results(out)
    expected = [rouge_l(r["prediction"], r["reference"]) if r["prediction"] else 0.0 for r in rows.values()]
    assert report["metrics"]["rouge_l"]["value"] == pytest.approx(100 * sum(expected) / 2)
