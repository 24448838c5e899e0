"""`medgem eval` as a user runs it: a subprocess, the real transformers engine on a tiny model.

The tiny model has random weights, so its answers are garbage; these tests check the pipeline:
files, counts, resume, and one-line errors for bad data.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

DATA = Path(__file__).parent / "data" / "eval"


def test_eval_mcq_end_to_end_on_the_hf_engine(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["eval", "mcq", str(DATA / "medqa.jsonl"), "--model", str(tiny_text_checkpoint),
              "--engine", "hf", "--device", "cpu", "--max-new-tokens", "6", "--out", str(out),
              "--no-progress"]
    first = run_cli(*common, "--limit", "3")
    assert first.returncode == 0, first.stderr
    assert "mcq: accuracy" in first.stdout and "3/3 scored" in first.stdout
    # the numbers printed are labelled as a test model's (only report.md said so)
    assert "note: Demo/test model: these numbers say nothing about MedGemma" in first.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 3

    again = run_cli(*common)
    assert again.returncode == 1 and "already holds a run" in again.stderr

    resumed = run_cli(*common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6 and len({r["id"] for r in results}) == 6
    assert all(r["status"] == "ok" and r["completion_tokens"] <= 6 for r in results)

    report = json.loads((out / "report.json").read_text())
    assert report["n_total"] == 6 and report["n_scored"] == 6 and report["n_failed"] == 0
    assert report["n_unparseable"] == sum(not r["parsed"] for r in results)
    assert report["model"]["engine"] == "hf" and report["model"]["demo"] is True
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["model"]["revision"] and manifest["settings"]["temperature"] == 0.0
    assert "Demo/test model" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    compared = run_cli("eval", "compare", str(out), str(out), "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["p_value"] == 1.0


def test_eval_bad_data_is_one_line_naming_file_and_row(tmp_path: Path) -> None:
    result = run_cli("eval", "mcq", str(DATA / "missing_options.jsonl"), "--model", "no-such-model",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "missing_options.jsonl row 2: missing field 'options'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_eval_empty_dataset(tmp_path: Path) -> None:
    result = run_cli("eval", "pubmedqa", str(DATA / "empty.jsonl"), "--model", "x")
    assert result.returncode == 1 and "the dataset is empty" in result.stderr


def test_eval_compare_needs_run_folders(tmp_path: Path) -> None:
    result = run_cli("eval", "compare", str(tmp_path), str(tmp_path))
    assert result.returncode == 1 and "is not an evaluation run" in result.stderr
