"""`medgem eval` on a model that is no MedGemma variant (the tiny test model): `--think auto`
sends the official prompt without the thinking instruction, and the reports say what the model
is instead of printing None; the chart carries the test-model label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from conftest import REPO, run_cli
from medgem.answer import TEST_MODEL_LABEL
from medgem.request.thinking import THINK_INSTRUCTION

DATA = Path(__file__).parent / "data" / "eval"


def test_think_auto_sends_no_thinking_instruction_to_a_model_without_thinking(
        tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    from medgem import MedGemma
    from medgem.evaluate import EvalConfig, prepare, run_evaluation

    mg = MedGemma.load(str(tiny_text_checkpoint), engine="hf", options={"device": "cpu", "progress": False}, audit=False)
    sent: list[Any] = []
    real_prepare = mg.engine.prepare

    def prepare_and_keep(request: Any) -> Any:  # the real engine; the requests are kept to read
        sent.append(request)
        return real_prepare(request)

    mg.engine.prepare = prepare_and_keep  # type: ignore[method-assign]
    try:
        config = EvalConfig(task="mcq", data=str(DATA / "medqa.jsonl"), limit=2, max_new_tokens=2,
                            think="auto")
        run_evaluation(mg, prepare(config), tmp_path / "run", progress=False)
    finally:
        mg.close()
    assert len(sent) == 2
    for request in sent:
        assert all(THINK_INSTRUCTION not in message.text for message in request.messages)
        assert request.options.think is False
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["think"] is False and "not a MedGemma thinking variant" in settings["think_note"]


def test_reports_name_a_non_variant_model_and_label_the_chart(tiny_text_checkpoint: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("eval", "mcq", str(DATA / "medqa.jsonl"), "--model", str(tiny_text_checkpoint),
                     "--engine", "hf", "--device", "cpu", "--max-new-tokens", "2", "--limit", "2",
                     "--out", str(out), "--no-progress", "--no-audit")
    assert result.returncode == 0, result.stderr
    markdown = (out / "report.md").read_text()
    assert "None" not in markdown
    assert "not a MedGemma variant" in markdown and "unquantized" in markdown
    assert TEST_MODEL_LABEL in markdown
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(out / "report.png", artifacts / "eval-report-test-model.png")  # to look at
    chart = Image.open(out / "report.png")
    assert chart.text.get("Description") == TEST_MODEL_LABEL  # type: ignore[attr-defined]
