"""`medgem demo` says what it does per stage and how long each took on this machine the last
time (a subprocess, as a user runs it)."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import run_cli


def test_each_stage_is_said_with_the_last_runs_time(demo_checkpoint: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    run_cache = Path(os.environ["MEDGEM_CACHE"])
    for name in ("gguf", "gemma3-tokenizer-v2", demo_checkpoint.name):
        (cache / name).symlink_to((run_cache / name).resolve())
    env = {"MEDGEM_CACHE": str(cache), "MEDGEM_AUDIT_DB": str(tmp_path / "audit.sqlite")}
    first = run_cli("demo", "--max-new-tokens", "1", env=env)
    assert first.returncode == 0, first.stderr
    stages = ("loading the demo model", "reading RG1_UNCR.dcm (DICOM: window, RGB, 896 px)",
              "encoding the image (256 tokens) and prefilling the prompt")
    for stage in stages:
        assert f"medgem demo: {stage} (first time on this machine: no estimate yet)" in first.stderr
    assert "building the demo model" not in first.stderr  # it was built: not said again
    assert (cache / "demo-times.json").is_file()
    again = run_cli("demo", "--max-new-tokens", "1", env=env)
    assert again.returncode == 0, again.stderr
    for stage in stages:
        assert f"medgem demo: {stage} (took " in again.stderr and " here last time)" in again.stderr
    assert "no decode speed (one token)" in again.stderr  # a one-token answer: no invented speed
