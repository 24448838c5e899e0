"""RadGraph F1 for the report task: the F1 arithmetic on hand-made entity/relation sets, the
wiring with a hand-written annotator standing in for RadGraph's model, and (radgraph is not
installed here) the report that says what to install and still computes everything else."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from eval_card_fixtures import eval_cli
from medgem.evaluate import radgraph_f1
from medgem.evaluate.radgraph_f1 import graph_facts, report_f1
from medgem.evaluate.tasks import get_task
from medgem.evaluate.tasks.base import EvalItem, Scored

DATA = Path(__file__).parent / "data" / "eval"

EFFUSION = {"entities": {
    "1": {"tokens": "Effusion", "label": "Observation::definitely present", "relations": [["located_at", "2"]]},
    "2": {"tokens": "pleural", "label": "Anatomy::definitely present", "relations": []},
}}


def test_graph_facts_are_entities_and_relations() -> None:
    assert graph_facts(EFFUSION) == [
        ("effusion", "Observation::definitely present"),
        ("effusion", "Observation::definitely present", "located_at", "pleural", "Anatomy::definitely present"),
        ("pleural", "Anatomy::definitely present"),
    ]
    assert graph_facts({"entities": {}}) == [] and graph_facts({}) == []


def test_report_f1_by_hand() -> None:
    reference = [("effusion", "OBS-DP"), ("pleural", "ANAT-DP"), ("effusion", "OBS-DP", "located_at", "pleural", "ANAT-DP")]
    # the entities right, the relation missed, one extra entity: tp 2, fp 1, fn 1 -> 4/6
    predicted = [("effusion", "OBS-DP"), ("pleural", "ANAT-DP"), ("edema", "OBS-DP")]
    assert report_f1(predicted, reference) == pytest.approx(2 / 3)
    assert report_f1(reference, reference) == 1.0
    assert report_f1([], reference) == 0.0 and report_f1([], []) == 1.0


def test_report_metrics_with_an_annotator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-written annotator in RadGraph's output shape stands in for its model: the metric
    and the card comparison are wired through the report task."""
    def annotate(texts: list[str]) -> dict[str, Any]:
        return {"0": EFFUSION if "effusion" in texts[0] else {"entities": {}}}

    monkeypatch.setattr(radgraph_f1, "_annotator", lambda: (annotate, ""))
    radgraph_f1._facts.cache_clear()
    try:
        task = get_task("report")
        items = [EvalItem("a", "x", 1, "q", "Pleural effusion."), EvalItem("b", "x", 2, "q", "Small effusion.")]
        scored = [Scored("effusion present", True, False, 0.5), Scored("clear lungs", True, False, 0.0)]
        metrics = task.metrics(items, scored)
        assert metrics["radgraph_f1"].value == pytest.approx(0.5)  # report a: 1.0, report b: 0.0
        assert task.notes() == []
    finally:
        radgraph_f1._facts.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("radgraph") is not None, reason="radgraph is installed here")
def test_without_radgraph_the_report_says_what_to_install_and_the_rest_is_computed(
        tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = eval_cli("report", DATA / "reports.jsonl", tiny_vlm_checkpoint, out, "--limit", "2",
                      "--variant", "1.5-4b-it", "--benchmark", "mimic-cxr-report")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes[0] == ("note: RadGraph F1 not computed: install the `radgraph` package (pip install "
                        "radgraph); it fetches its model files from Hugging Face on first use.")
    assert len(notes) == 2 and notes[1].startswith("note: Demo/test model")  # a tiny test model
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"rouge_l", "bleu"} and report["n_scored"] == 2
    assert report["model_card"]["value"] == 27.2 and report["model_card_comparable"] is False
    markdown = (out / "report.md").read_text()
    assert "- Note: RadGraph F1 not computed: install the `radgraph` package" in markdown
    assert "Not comparable" in markdown and "| rouge_l |" in markdown
