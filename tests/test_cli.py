"""The `medgem` command run in a subprocess, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli


@pytest.fixture(scope="module")
def xray_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "chest.png"
    Image.linear_gradient("L").resize((120, 100)).save(path)
    return path


def test_ask_json_has_answer_usage_timings_and_model(tiny_vlm_checkpoint: Path, xray_png: Path) -> None:
    result = run_cli("ask", "Describe this X-ray", "--image", str(xray_png), "--model",
                     str(tiny_vlm_checkpoint), "--max-new-tokens", "5", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"
    assert data["model"]["id"] == "medgem-test-vlm" and data["model"]["revision"].startswith("local-")
    assert data["label"].startswith("TEST MODEL") and "clinical use" in data["caveat"]
    assert set(data) >= {"answer", "thinking", "timings"}


def test_ask_streams_text_and_prints_caveat_label_and_speed(tiny_text_checkpoint: Path) -> None:
    result = run_cli("ask", "How do you differentiate bacterial from viral pneumonia?", "--model",
                     str(tiny_text_checkpoint), "--max-new-tokens", "4", "--system",
                     "You are a helpful medical assistant.", "--engine", "hf-pipeline")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "TEST MODEL" in result.stderr
    assert "must not directly inform" not in result.stdout  # caveat and stats stay off stdout
    assert "first token" in result.stderr and "tok/s" in result.stderr
    assert "must not directly inform diagnosis" in result.stderr


def test_question_from_stdin_and_no_caveat_flag(tiny_text_checkpoint: Path) -> None:
    result = run_cli("ask", "-", "--model", str(tiny_text_checkpoint), "--max-new-tokens", "2",
                     "--no-caveat", stdin="What is sepsis?")
    assert result.returncode == 0, result.stderr
    assert "must not directly inform diagnosis" not in result.stderr


def test_describe_a_dicom_radiograph_saves_what_the_model_saw(
    tiny_vlm_checkpoint: Path, chest_xray_dicom: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    result = run_cli("describe", str(chest_xray_dicom), "--model", str(tiny_vlm_checkpoint),
                     "--max-new-tokens", "3", "--save-preprocessed", str(out), "--json")
    assert result.returncode == 0, result.stderr
    saved = sorted(out.glob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.mode == "RGB" and min(image.size) > 64


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ask", "hi", "--model", "/no/such/model"], "no model at '/no/such/model'"),
        (["ask", "   ", "--model", "{text}"], "the question is empty"),
        (["ask", "hi", "--model", "{empty}"], "holds no model"),
        (["ask", "hi", "--model", "{text}", "--image", "{png}"], "text-only model"),
        (["ask", "hi", "--model", "{vlm}", "--image", "{bad}"], "error"),
        (["ask", "hi", "--model", "{vlm}", "--image", "/no/such.png"], "no image at"),
        (["ask", "pneumonia " * 2200, "--model", "{vlm}"], "context is 2048"),
        (["ask", "hi", "--model", "{vlm}", "--quantize", "4bit", "--device", "cpu"], "needs a CUDA GPU"),
        (["ask", "hi", "--model", "{vlm}", "--engine", "nope"], "unknown engine 'nope'"),
        (["ask", "hi", "--model", "{text}", "--variant", "4b-it", "--think"], "does not support thinking"),
    ],
)
def test_bad_input_exits_nonzero_with_one_actionable_line(
    args: list[str], expected: str, tiny_vlm_checkpoint: Path, tiny_text_checkpoint: Path,
    xray_png: Path, tmp_path: Path,
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    values = {"text": str(tiny_text_checkpoint), "vlm": str(tiny_vlm_checkpoint), "png": str(xray_png),
              "bad": str(bad), "empty": str(empty)}
    result = run_cli(*[a.format(**values) for a in args])
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("medgem:")]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = run_cli("--debug", "ask", "hi", "--model", "/no/such/model")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_models_lists_the_family_and_finds_cached_copies(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    from test_resolve import make_hf_cache

    make_hf_cache(tmp_path / "hub", tiny_text_checkpoint, "google/medgemma-27b-text-it")
    result = run_cli("models", "--json", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(result.stdout) if "variant" in row}
    assert set(rows) == {"4b-it", "4b-pt", "27b-text-it", "27b-it", "1.5-4b-it"}
    assert rows["27b-text-it"]["local"] and rows["27b-text-it"]["local"][0]["bytes"] > 0
    assert rows["4b-it"]["local"] == []
    assert rows["1.5-4b-it"]["thinking"].startswith("yes") and rows["4b-it"]["thinking"] == "no"


def test_doctor_reports_machine_engines_and_a_plan_per_variant() -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cores"] >= 1 and data["ram_total_gib"] > 0
    assert data["engines"]["hf (transformers)"] is True
    plan = data["variants"]["4b-it"]
    assert plan["memory_gib"] > 2 and (plan["fits"] is False or plan["engine"])
    human = run_cli("doctor")
    assert "Variants on this machine" in human.stdout


def test_chat_slash_mistakes_are_one_line_and_the_chat_goes_on(tiny_text_checkpoint: Path,
                                                                tmp_path: Path) -> None:
    """/save to a folder that does not exist ended the whole chat with "unexpected error:
    FileNotFoundError" (the conversation lost); /image with no path read the current folder
    as a DICOM series."""
    script = (f"Hello?\n/save {tmp_path}/no/such/dir/chat.json\n/image\n"
              f"/save {tmp_path}/chat.json\n/quit\n")
    result = run_cli("chat", "--model", str(tiny_text_checkpoint), "--engine", "hf", "--no-audit",
                     "--max-new-tokens", "2", stdin=script, env={"MEDGEM_DEBUG": ""})
    assert result.returncode == 0, result.stderr
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "cannot save the chat to" in result.stderr, result.stderr
    assert "/image needs a PATH" in result.stderr and "is empty" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "chat.json").read_text())["turns"][0]["content"] == "Hello?"


def test_chat_keeps_history_across_turns(tiny_vlm_checkpoint: Path, xray_png: Path) -> None:
    script = f"/image {xray_png}\nDescribe this X-ray\nAnd the heart?\n/quit\n"
    result = run_cli("chat", "--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "3", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "attached chest.png" in result.stderr
    assert result.stdout.count("medgemma>") == 2
    assert result.stderr.count("prompt +") == 2
    prompts = [int(line.split("·")[2].split("prompt")[0]) for line in result.stderr.splitlines()
               if "prompt +" in line]
    assert prompts[1] > prompts[0]  # the second turn carries the first (with its image)
