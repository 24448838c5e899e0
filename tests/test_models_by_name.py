"""Models by name: `medgem models` lists what --model accepts (variants, the demo model,
converted GGUFs, local checkpoints), and the default model comes from flag > env > config file.
Every check runs `medgem` in a subprocess, as a user does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture()
def medgem_cache(tmp_path: Path, demo_checkpoint: Path) -> Path:
    """A medgem cache of its own (its record of converted models starts empty) that shares the
    built demo model, tokenizer and GGUF with the real cache instead of building them again."""
    cache = tmp_path / "medgem-cache"
    cache.mkdir()
    real = demo_checkpoint.parent
    for name in (demo_checkpoint.name, "gguf", "gemma3-tokenizer-v2", "llamacpp-probe"):
        if (real / name).exists():
            (cache / name).symlink_to(real / name)
    return cache


def _env(cache: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"MEDGEM_CACHE": str(cache), "HF_HUB_CACHE": str(tmp_path / "hub"),
            "MEDGEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "MEDGEM_MODEL": "",
            "MEDGEM_MODEL_DIRS": "", **extra}


def test_models_lists_the_demo_converted_ggufs_and_folder_checkpoints(
    medgem_cache: Path, tmp_path: Path, tiny_vlm_checkpoint: Path, tiny_text_checkpoint: Path,
) -> None:
    out = tmp_path / "my-vlm-gguf"
    env = _env(medgem_cache, tmp_path)
    converted = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out", str(out),
                        "--no-check", env=env)
    assert converted.returncode == 0, converted.stderr
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "tiny-text").symlink_to(tiny_text_checkpoint)
    (shelf / "notes").mkdir()  # not a checkpoint: not listed

    result = run_cli("models", "--json", "--dir", str(shelf), env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    demo = rows["medgem-demo-gemma3-270m"]
    assert demo["source"] == "demo" and "demo" in demo["aliases"]
    assert demo["format"] == "safetensors bf16" and demo["size_bytes"] > 400e6
    gguf = rows["my-vlm-gguf"]
    assert gguf["source"] == "converted" and gguf["format"] == "gguf f16"
    assert gguf["path"] == str(out.resolve()) and gguf["size_bytes"] > 0
    local = rows["tiny-text"]
    assert local["source"] == "local" and local["format"] == "safetensors f32"
    assert local["path"] == str(shelf / "tiny-text")
    assert "notes" not in rows
    assert rows["4b-it"]["downloaded"] is False and rows["4b-it"]["path"] is None

    human = run_cli("models", "--dir", str(shelf), env=env)
    line = next(li for li in human.stdout.splitlines() if li.startswith("my-vlm-gguf"))
    assert "converted" in line and "gguf f16" in line and str(out.resolve()) in line


def test_model_accepts_the_demo_and_a_folder_checkpoint_by_name(
    medgem_cache: Path, tmp_path: Path, tiny_text_checkpoint: Path,
) -> None:
    env = _env(medgem_cache, tmp_path, MEDGEM_MODEL_DIRS=str(tiny_text_checkpoint.parent))
    for name in ("demo", "medgem-demo-gemma3-270m"):
        result = run_cli("ask", "What is sepsis?", "--model", name, "--max-new-tokens", "2",
                         "--no-audit", env=env)
        assert result.returncode == 0, result.stderr
        assert "[medgem-demo-gemma3-270m · hf ·" in result.stderr
    local = run_cli("ask", "What is sepsis?", "--model", "tiny-text", "--max-new-tokens", "2",
                    "--no-audit", env=env)
    assert local.returncode == 0, local.stderr
    assert "[medgem-test-text · hf ·" in local.stderr


def test_a_converted_gguf_runs_by_its_name(
    medgem_cache: Path, tmp_path: Path, tiny_vlm_checkpoint: Path, llamacpp_runs: None,
) -> None:
    env = _env(medgem_cache, tmp_path)
    out = tmp_path / "named-gguf"
    converted = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out", str(out),
                        "--no-check", env=env)
    assert converted.returncode == 0, converted.stderr
    result = run_cli("ask", "What is sepsis?", "--model", "named-gguf", "--max-new-tokens", "2",
                     "--no-audit", env=env)
    assert result.returncode == 0, result.stderr
    assert "[medgem-test-vlm · llamacpp ·" in result.stderr  # the name its GGUF carries


def test_an_unknown_name_gets_one_line_with_close_matches(medgem_cache: Path, tmp_path: Path) -> None:
    result = run_cli("ask", "hi", "--model", "dmeo", env=_env(medgem_cache, tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("medgem: error: no model named 'dmeo'") and "'demo'" in lines[0]


def test_the_default_model_comes_from_flag_then_env_then_config_file(
    medgem_cache: Path, tmp_path: Path, tiny_text_checkpoint: Path, tiny_vlm_checkpoint: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'model = "tiny-text"\nmodel_dirs = ["{tiny_text_checkpoint.parent}"]\n')
    env = _env(medgem_cache, tmp_path, MEDGEM_CONFIG=str(config))
    del env["MEDGEM_MODEL_DIRS"]
    ask = ("ask", "What is sepsis?", "--max-new-tokens", "2", "--no-audit")

    from_file = run_cli(*ask, env=env)
    assert from_file.returncode == 0, from_file.stderr
    assert "[medgem-test-text · hf ·" in from_file.stderr

    from_env = run_cli(*ask, env={**env, "MEDGEM_MODEL": str(tiny_vlm_checkpoint)})
    assert from_env.returncode == 0, from_env.stderr
    assert "[medgem-test-vlm · hf ·" in from_env.stderr

    from_flag = run_cli(*ask, "--model", "tiny-text",
                        env={**env, "MEDGEM_MODEL": str(tiny_vlm_checkpoint)})
    assert from_flag.returncode == 0, from_flag.stderr
    assert "[medgem-test-text · hf ·" in from_flag.stderr

    listed = run_cli("models", "--json", env=env)  # the config's folders are listed too
    assert "tiny-text" in {row["name"] for row in json.loads(listed.stdout)}


def test_a_broken_config_file_is_one_line(medgem_cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('modle = "demo"\n')
    result = run_cli("models", env=_env(medgem_cache, tmp_path, MEDGEM_CONFIG=str(config)))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"medgem: error: the config file '{config}' has unknown setting(s) modle — the "
        "settings are: dicomweb_token, fhir_token, llamacpp, model, model_dirs, remote")


def test_models_dir_that_is_not_a_folder_is_said(medgem_cache: Path, tmp_path: Path) -> None:
    """A mistyped `--dir` listed the same table as without it, with no word, so the user's
    checkpoints seemed not to be there; it is one line naming the path."""
    (tmp_path / "notes.txt").write_text("a file")
    for wrong in (tmp_path / "modles", tmp_path / "notes.txt"):
        result = run_cli("models", "--dir", str(wrong), env=_env(medgem_cache, tmp_path))
        assert result.returncode == 1, result.stdout
        assert f"--dir {wrong} is not a folder" in result.stderr, result.stderr
        assert result.stdout == ""
