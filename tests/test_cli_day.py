"""A user's day at the terminal: the model by environment, inputs checked first, --debug
anywhere, broken pipes (each a subprocess, as a user runs medgem)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, run_cli


def test_the_model_can_come_from_medgem_model(tiny_text_checkpoint: Path) -> None:
    result = run_cli("ask", "What is sepsis?", "--max-new-tokens", "3", "--no-audit",
                     env={"MEDGEM_MODEL": str(tiny_text_checkpoint)})
    assert result.returncode == 0, result.stderr
    missing = run_cli("ask", "What is sepsis?", env={"MEDGEM_MODEL": ""})
    assert missing.returncode == 2 and "--model" in missing.stderr


def test_a_missing_image_is_reported_before_any_model_loads(tmp_path: Path) -> None:
    """The model does not exist either: the image is what gets named, so nothing loaded first."""
    result = run_cli("ask", "Describe", "--image", str(tmp_path / "missing.dcm"),
                     "--model", str(tmp_path / "no-model"), "--no-audit")
    assert result.returncode == 1
    assert f"no image at '{tmp_path / 'missing.dcm'}'" in result.stderr
    assert "no-model" not in result.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["   "], "the question is empty"),
    (["Describe", "--image", "{png}"], "is a text-only model"),
    (["Hi", "--variant", "4b-it", "--think"], "does not support thinking"),
])
def test_refusals_the_files_decide_come_before_any_weight_loads(
    args: list[str], expected: str, tiny_text_checkpoint: Path, tmp_path: Path,
) -> None:
    """The checkpoint's weights are garbage: a load would fail with a load error, so the named
    refusal proves that no weight was read before it."""
    broken = tmp_path / "broken-text"
    shutil.copytree(tiny_text_checkpoint, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    png = tmp_path / "chest.png"
    Image.new("L", (32, 32)).save(png)
    result = run_cli("ask", *[a.format(png=png) for a in args], "--model", str(broken),
                     "--no-audit", "--no-server")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("medgem: error")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "safetensors" not in result.stderr and "Traceback" not in result.stderr


def test_debug_works_after_the_subcommand(tmp_path: Path) -> None:
    quiet = run_cli("ask", "hi", "--model", str(tmp_path / "no-model"), "--no-audit")
    loud = run_cli("ask", "--debug", "hi", "--model", str(tmp_path / "no-model"), "--no-audit")
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    process = subprocess.Popen([sys.executable, "-m", "medgem", "models"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before medgem writes a byte
    error = process.stderr.read().decode()
    assert process.wait(60) == 0
    assert "BrokenPipeError" not in error and "error" not in error, error
