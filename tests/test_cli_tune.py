"""`medgem tune`, `medgem ask --adapter` and `medgem convert --adapter` as a user runs them: the
notebook's default LoRA settings on image + text data, and one line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from test_tune_data import header_only_checkpoint
from tune_fixtures import write_colour_vqa, write_cue_mcq

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory: pytest.TempPathFactory, tiny_vlm_checkpoint: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cli-tune")
    data = write_colour_vqa(root / "vqa", rows=6)
    out = root / "run"
    result = run_cli("tune", str(data), "--model", str(tiny_vlm_checkpoint), "--out", str(out),
                     "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
                     "--validation", "0.34", "--save-steps", "1", "--eval-max-new-tokens", "3",
                     "--name", "colours", "--merge", "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_tune_trains_images_with_the_notebook_settings_and_compares(vqa_run: tuple[Path, dict]) -> None:
    out, report = vqa_run
    assert report["steps"] == 2 and report["name"] == "colours"
    assert report["adapter"] == str(out / "adapter") and len(report["sha256"]) == 64
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 16, 0.05)
    assert set(config["modules_to_save"]) >= {"embed_tokens"}  # kept tied to lm_head
    assert report["comparison"]["test"].startswith("paired bootstrap")
    assert report["comparison"]["paired_items"] == 2
    assert (out / "eval" / "base" / "results.jsonl").is_file()
    assert (out / "eval" / "tuned" / "results.jsonl").is_file()
    assert report["merged"] == str(out / "merged")  # --merge: a checkpoint that needs no PEFT
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["medgem_adapter"] == {"name": "colours", "sha256": report["sha256"]}
    assert not (out / "merged.partial").exists()


def test_ask_with_the_adapter_names_it_in_the_answer(vqa_run: tuple[Path, dict],
                                                      tiny_vlm_checkpoint: Path) -> None:
    out, report = vqa_run
    image = out.parent / "vqa" / "img0.png"
    result = run_cli("ask", "What colour is this picture?", "--model", str(tiny_vlm_checkpoint),
                     "--adapter", str(out), "--image", str(image), "--max-new-tokens", "3", "--json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert (model["adapter"], model["adapter_sha256"]) == ("colours", report["sha256"])


def test_chat_with_the_adapter_names_it_on_every_turn(vqa_run: tuple[Path, dict],
                                                      tiny_vlm_checkpoint: Path) -> None:
    out, report = vqa_run
    result = run_cli("chat", "--model", str(tiny_vlm_checkpoint), "--engine", "hf", "--device", "cpu",
                     "--adapter", str(out), "--max-new-tokens", "3", "--no-audit",
                     stdin="What colour?\nAnd now?\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"+ adapter colours@{report['sha256'][:12]}") == 2


def test_eval_with_the_adapter_records_it_in_the_report(vqa_run: tuple[Path, dict],
                                                         tiny_vlm_checkpoint: Path) -> None:
    out, report = vqa_run
    run_folder = out.parent / "eval-adapter"
    result = run_cli("eval", "vqa", str(out.parent / "vqa" / "vqa.jsonl"), "--model",
                     str(tiny_vlm_checkpoint), "--engine", "hf", "--device", "cpu",
                     "--adapter", str(out), "--max-new-tokens", "3", "--limit", "2",
                     "--out", str(run_folder), "--no-progress", "--no-audit")
    assert result.returncode == 0, result.stderr
    model = json.loads((run_folder / "report.json").read_text())["model"]
    assert model["adapter_sha256"] == report["sha256"]
    tuned = json.loads((out / "eval" / "tuned" / "report.json").read_text())["model"]
    assert tuned["adapter_sha256"] == report["sha256"]


def test_serve_with_the_adapter_names_it_in_answers_and_audit(
        vqa_run: tuple[Path, dict], tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import httpx

    from medgem.audit import open_store
    from test_server_helpers import free_port, wait_healthy

    out, report = vqa_run
    port, audit = free_port(), tmp_path / "audit.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--engine",
         "hf", "--device", "cpu", "--adapter", str(out), "--port", str(port), "--audit-db", str(audit)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "MEDGEM_API_KEYS": str(tmp_path / "none.json")})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process, timeout=180)
        body = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "model": "medgem-test-vlm", "max_tokens": 3,
            "messages": [{"role": "user", "content": "What colour?"}]}).json()
    finally:
        process.terminate()
        process.wait(60)
    extra = body["medgem"]
    assert (extra["adapter"], extra["adapter_sha256"]) == ("colours", report["sha256"])
    record = open_store(audit).get(extra["audit_id"])
    assert record is not None and record.body["model"]["adapter_sha256"] == report["sha256"]


def test_convert_explains_that_whole_embeddings_need_merging(vqa_run: tuple[Path, dict]) -> None:
    out, _ = vqa_run
    result = run_cli("convert", "--adapter", str(out), "--out", str(out.parent / "gguf"))
    assert result.returncode == 1
    assert "llama.cpp's LoRA format cannot hold" in result.stderr and "--merge" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_inputs_give_one_line_each(tmp_path: Path, tiny_text_checkpoint: Path,
                                        tiny_vlm_checkpoint: Path) -> None:
    mcq = write_cue_mcq(tmp_path / "mcq.jsonl", rows=10)
    vqa = write_colour_vqa(tmp_path / "vqa", rows=3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                   '"content": "a"}]}\n{"messages": "not a list"}\n')
    holes = write_colour_vqa(tmp_path / "holes", rows=3)
    (holes.parent / "img1.png").unlink()
    huge = header_only_checkpoint(tiny_text_checkpoint, tmp_path / "huge", 262208, 400_000)
    cases = [
        ([str(bad), "--model", str(tiny_text_checkpoint)], r"bad.jsonl row 2: 'messages' must be"),
        ([str(vqa), "--model", str(tiny_text_checkpoint)], "is a text-only model but"),
        ([str(holes), "--model", str(tiny_vlm_checkpoint)], r"vqa.jsonl row 2: image .* not found"),
        ([str(mcq), "--model", str(tiny_text_checkpoint), "--quantize", "4bit", "--device", "cpu"],
         "needs a CUDA GPU"),
        ([str(mcq), "--model", str(huge)], r"needs about \d+"),
    ]
    for args, message in cases:
        result = run_cli("tune", *args, "--out", str(tmp_path / "out"))
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medgem: error:"), result.stderr
        assert pytest.importorskip("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_tune_prints_the_paired_comparison_at_the_end(tmp_path: Path,
                                                      tiny_text_checkpoint: Path) -> None:
    data = write_cue_mcq(tmp_path / "mcq.jsonl", rows=8)
    out = tmp_path / "run"
    result = run_cli("tune", str(data), "--model", str(tiny_text_checkpoint), "--out", str(out),
                     "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1",
                     "--validation", "0.25", "--no-save-embeddings", "--eval-max-new-tokens", "3",
                     "--no-audit")
    assert result.returncode == 0, result.stderr
    assert "trained 1 steps" in result.stdout and "validation loss" in result.stdout
    assert "exact McNemar" in result.stdout  # the harness's paired comparison, as eval compare
    assert f"--adapter {out}" in result.stdout
    assert "6 training and 2 held-out mcq examples" in result.stderr


def test_convert_merge_gives_llama_cpp_a_model_that_names_the_adapter(
        vqa_run: tuple[Path, dict]) -> None:
    pytest.importorskip("llama_cpp")
    out, report = vqa_run
    result = run_cli("convert", "--adapter", str(out), "--merge", "--quant", "f16",
                     "--out", str(out.parent / "merged-gguf"), "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["lora"] is None and written["model"] and written["mmproj"]
    image = out.parent / "vqa" / "img0.png"
    asked = run_cli("ask", "What colour is this picture?", "--model", written["model"],
                    "--mmproj", written["mmproj"], "--engine", "llamacpp", "--image", str(image),
                    "--max-new-tokens", "3", "--n-ctx", "512", "--no-audit", "--json")
    assert asked.returncode == 0, asked.stderr
    model = json.loads(asked.stdout)["model"]
    assert (model["adapter"], model["adapter_sha256"]) == ("colours", report["sha256"])
