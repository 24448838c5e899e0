"""`medgem doctor` tells the truth: its prose is made from its table, every figure names the
results file it was measured in (and that file holds it), llama.cpp counts only when it runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import REPO, run_cli


def test_the_prose_uses_the_tables_numbers_and_names_its_sources() -> None:
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    rows = {m["variant"]: m for m in re.finditer(
        r"^  (?P<variant>\S+)\s+yes\s+(?P<engine>\S+)\s+(?P<precision>\S+)\s+[\d.]+ GiB\s+"
        r"(?P<ceiling>[\d.]+) tok/s\s+~(?P<expected>[\d.]+) tok/s$", result.stdout, re.M)}
    explained = re.findall(r"^  (\S+) on (\S+) (\S+): ([\d.]+) tok/s x \d+% = ~([\d.]+) tok/s "
                           r"\((benchmarks/results/\S+)\)$", result.stdout, re.M)
    assert explained, result.stdout
    for variant, engine, precision, ceiling, expected, _ in explained:
        row = rows[variant]
        assert (row["engine"], row["precision"], row["ceiling"], row["expected"]) == (
            engine, precision, ceiling, expected)
    assert "70-80%" not in result.stdout and "~12 tok/s" not in result.stdout


def test_every_figure_is_in_the_results_file_it_names() -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    figures = report["measured_on"]["figures"]
    assert len(figures) >= 3 and "2 cores" in report["measured_on"]["machine"]
    for figure in figures:
        text = (REPO / figure["source"]).read_text()
        assert f"{figure['value']:.2f}" in text, figure
    for row in report["variants"].values():
        if row["decode_tok_s_expected"] is not None:
            assert row["decode_tok_s_expected"] <= row["decode_tok_s_ceiling"]
            assert (REPO / row["decode_source"]).is_file()


def test_llama_cpp_is_neither_ticked_nor_recommended_when_its_probe_fails(tmp_path: Path) -> None:
    result = run_cli("doctor", env={"MEDGEM_CACHE": str(tmp_path),
                                    "MEDGEM_LLAMA_CPU_VARIANT": "no-such-backend"})
    assert result.returncode == 0, result.stderr
    assert "✗ llamacpp" in result.stdout and "✓ llamacpp" not in result.stdout
    assert "does not run on this CPU" in result.stdout
    assert "Recommended here" not in result.stdout
    assert not re.search(r"^  \S+\s+yes\s+llamacpp", result.stdout, re.M)


def test_measure_keeps_the_vision_choice_that_later_runs_read(tmp_path: Path) -> None:
    """`doctor --measure` times the clip and PyTorch once (in a child process) and keeps the
    choice; a later `doctor` (and every engine) reads it back without measuring; before it,
    the clip, with the hint to measure."""
    env = {"MEDGEM_CACHE": str(tmp_path)}
    before = json.loads(run_cli("doctor", "--json", env=env).stdout)["llamacpp"]["vision"]
    assert before["path"] == "llamacpp" and "doctor --measure" in before["why"]
    assert not (tmp_path / "kernels.json").exists()
    measured = run_cli("doctor", "--measure", "--json", env=env, timeout=600)
    assert measured.returncode == 0, measured.stderr
    vision = json.loads(measured.stdout)["llamacpp"]["vision"]
    assert vision["path"] in ("llamacpp", "torch") and "measured here once" in vision["why"]
    kept = json.loads((tmp_path / "kernels.json").read_text())
    assert [key for key in kept if key.startswith("vision|")]
    again = json.loads(run_cli("doctor", "--json", env=env).stdout)["llamacpp"]["vision"]
    assert again == vision
