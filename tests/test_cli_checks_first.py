"""Wrong inputs, flag values and ports are refused before any model loads, in every command that
runs a model (each a subprocess, as a user runs medgem).

"Before any load" is shown by what did not happen, not by a time: the checkpoint's weights are
garbage, so a load would end in a load error naming safetensors; the refusal that comes instead,
with no loading line, proves nothing was loaded first.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli


@pytest.fixture(scope="module")
def broken(tiny_vlm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("broken") / "broken-vlm"
    shutil.copytree(tiny_vlm_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").write_bytes(b"junk")  # shorter than its own header
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    Image.new("RGB", (64, 64), (80, 80, 80)).save(folder / "photo.dcm", format="JPEG")
    (folder / "notes.png").write_text("this is a text file, not an image")
    Image.new("RGB", (32, 32), (90, 90, 90)).save(folder / "photo.png")
    (folder / "items.jsonl").write_text(json.dumps(
        {"question": "Is sepsis an infection response?", "options": {"A": "yes", "B": "no"},
         "answer": "A"}) + "\n")
    return {"jpeg_dcm": str(folder / "photo.dcm"), "text_png": str(folder / "notes.png"),
            "data": str(folder / "items.jsonl"), "png": str(folder / "photo.png"),
            "boxes": str(folder / "boxes.png")}


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def _refused_before_load(result: object, expected: str) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode != 0, stderr  # type: ignore[attr-defined]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], stderr
    assert "unpack requires" not in stderr and "Traceback" not in stderr, stderr
    assert "loading" not in stderr and "usage:" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["ask", "Describe", "--image", "{jpeg_dcm}"], "named like DICOM but is not a DICOM file"),
    (["ask", "Describe", "--image", "{text_png}"], "is not an image"),
    (["ask", "Describe", "--max-new-tokens", "-5"], "argument --max-new-tokens: must be at least 1, got -5"),
    (["ask", "Describe", "--temperature", "-1"], "argument --temperature"),
    (["ask", "   "], "the question is empty"),
    (["ask", "Where is the lesion?", "--boxes", "{boxes}"], "--boxes needs exactly one --image"),
    (["ask", "Where?", "--image", "{png}", "--image", "{png}", "--boxes", "{boxes}"],
     "--boxes needs exactly one --image"),
    (["ask", "Where?", "--image", "{png}", "--boxes", "{text_png}/boxes.png"],
     "cannot write the boxes to"),
    (["ask", ""], "the question is empty"),
    (["describe", "{jpeg_dcm}"], "named like DICOM but is not a DICOM file"),
    (["describe", "{text_png}"], "is not an image"),
    (["describe", "{text_png}", "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["chat", "--max-new-tokens", "-5"], "argument --max-new-tokens: must be at least 1, got -5"),
    (["serve", "--port", "-1"], "argument --port: must be from 1 to 65535, got -1"),
    (["serve", "--port", "80000"], "argument --port"),
    (["serve", "--parallel", "0"], "argument --parallel"),
    (["eval", "mcq", "{data}", "--max-new-tokens", "-5"], "argument --max-new-tokens"),
    (["eval", "mcq", "{data}", "--concurrency", "0"], "argument --concurrency"),
])
def test_refused_before_any_model_loads_naming_the_flag(
    args: list[str], expected: str, broken: Path, files: dict[str, str],
) -> None:
    command = [a.format(**files) for a in args]
    audit = [] if command[0] == "serve" else ["--no-audit"]
    result = run_cli(*command, "--model", str(broken), *audit, stdin="What is sepsis?\n/quit\n")
    line = _refused_before_load(result, expected)
    assert "max_new_tokens" not in line and "top_p" not in line  # the flag, not a Python field


def test_the_broken_checkpoint_fails_when_it_is_loaded(broken: Path) -> None:
    """The control: a valid question does reach the load, which fails on the garbage weights
    (so a refusal above that names the input, not this, came before any load)."""
    result = run_cli("ask", "What is sepsis?", "--model", str(broken), "--no-audit", "--no-server")
    assert result.returncode != 0
    assert "unpack requires a buffer" in result.stderr, result.stderr


def test_tune_refuses_a_bad_value_before_any_load(broken: Path, files: dict[str, str],
                                                  tmp_path: Path) -> None:
    result = run_cli("tune", files["data"], "--model", str(broken), "--out", str(tmp_path / "run"),
                     "--batch-size", "0")
    _refused_before_load(result, "argument --batch-size: must be at least 1, got 0")
    assert not (tmp_path / "run").exists()


def test_serve_on_a_taken_port_names_it_and_what_holds_it(broken: Path, taken_port: int) -> None:
    import os

    result = run_cli("serve", "--model", str(broken), "--port", str(taken_port))
    line = _refused_before_load(result, f"port {taken_port} is already in use by pid {os.getpid()}")
    assert "pick another --port" in line and "serving on" not in result.stderr


def test_ask_without_a_model_gives_one_line_with_the_ways_to_name_one() -> None:
    result = run_cli("ask", "What is sepsis?", env={"MEDGEM_MODEL": ""})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--model demo" in lines[0] and "medgem models" in lines[0] and "MEDGEM_MODEL" in lines[0]


def test_a_misused_flag_is_one_line_not_the_usage() -> None:
    result = run_cli("ask", "hi", "--model", "demo", "--max-new-tokens", "many")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "medgem ask: error: argument --max-new-tokens: wants a whole number, got 'many' "
        "(see medgem ask --help)"]
