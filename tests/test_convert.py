"""`medgem convert`: GGUF files that carry the tokenizer as official Gemma GGUFs do, llama.cpp's
tensor names, Gemma's norm convention, real quantization, and one error per bad input."""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
# llama.cpp runs in this process below: only after a child process has shown it works here.
pytestmark = pytest.mark.usefixtures("llamacpp_runs")

from medgem.engines.gguf.convert import convert_checkpoint  # noqa: E402
from medgem.engines.gguf.write import read_sentencepiece  # noqa: E402
from medgem.engines.llamacpp.verify import check_conversion  # noqa: E402
from medgem.errors import InputError, NotACheckpointError  # noqa: E402


@functools.cache
def reader(path: Path, _written: float) -> Any:
    """One GGUFReader per file (and write time): parsing a 262k-token vocabulary takes ~15 s."""
    return gguf.GGUFReader(str(path))


@functools.cache
def _fields(path: Path, written: float) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader(path, written).fields.items()}


def fields(path: Path) -> dict[str, Any]:
    return _fields(path, path.stat().st_mtime)


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in reader(path, path.stat().st_mtime).tensors}


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in reader(path, path.stat().st_mtime).tensors}


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    from medgem.demo.build import demo_gguf_path

    return fields(demo_gguf_path())


@pytest.fixture(scope="module")
def converted(tiny_vlm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return convert_checkpoint(tiny_vlm_checkpoint, "f16", tmp_path_factory.mktemp("f16"),
                              verify=check_conversion)


@pytest.fixture(scope="module")
def converted_fields(converted: Any) -> dict[str, Any]:
    return fields(converted.model)


def test_tokenizer_is_carried_as_official_gemma_ggufs_carry_it(
    official: dict[str, Any], converted_fields: dict[str, Any]
) -> None:
    """Against the real Gemma 3 270M GGUF: same pieces, types, special ids and flags.

    Scores: identical for every non-normal piece; for normal pieces the checkpoint here has only
    tokenizer.json (no SentencePiece model), so the scores are ranks that order merges exactly as
    the official scores do (checked), which is all llama.cpp's SentencePiece tokenizer uses.
    """
    n = len(official["tokenizer.ggml.tokens"])
    tokens = converted_fields["tokenizer.ggml.tokens"]
    assert tokens[:n] == official["tokenizer.ggml.tokens"]
    assert len(tokens) == 262208 and tokens[262144] == "<image_soft_token>"  # rows of the embedding
    types = np.array(converted_fields["tokenizer.ggml.token_type"][:n])
    assert np.array_equal(types, official["tokenizer.ggml.token_type"])
    ours = np.array(converted_fields["tokenizer.ggml.scores"][:n])
    theirs = np.array(official["tokenizer.ggml.scores"])
    assert np.array_equal(ours[types != 1], theirs[types != 1])
    normal = types == 1
    assert np.array_equal(np.argsort(-ours[normal], kind="stable"), np.argsort(-theirs[normal], kind="stable"))
    for key in ("model", "pre", "bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id",
                "add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix"):
        assert converted_fields[f"tokenizer.ggml.{key}"] == official[f"tokenizer.ggml.{key}"], key
    assert converted_fields["tokenizer.ggml.eot_token_id"] == tokens.index("<end_of_turn>") == 106
    assert "<start_of_turn>" in converted_fields["tokenizer.chat_template"]


def test_tensor_names_and_hyperparameters_follow_llama_cpp(
    official: dict[str, Any], converted: Any, converted_fields: dict[str, Any]
) -> None:
    from medgem.demo.build import demo_gguf_path

    def per_block(names: Any) -> set[str]:
        return {re.sub(r"^blk\.\d+\.", "blk.N.", name) for name in names}

    assert per_block(tensor_types(converted.model)) == per_block(tensor_types(demo_gguf_path()))
    for key in official:
        if key.startswith("gemma3."):
            assert key in converted_fields, key
    assert converted_fields["general.architecture"] == "gemma3"
    assert converted_fields["gemma3.attention.sliding_window_pattern"] == [True, True]
    assert converted_fields["gemma3.rope.freq_base_swa"] == 10000.0
    vision = fields(converted.mmproj)
    assert vision["general.architecture"] == "clip" and vision["clip.projector_type"] == "gemma3"
    assert vision["clip.vision.projection_dim"] == converted_fields["gemma3.embedding_length"]
    assert vision["clip.vision.projector.scale_factor"] == 4  # 8x8 patches pooled to 2x2 tokens
    names = set(tensor_types(converted.mmproj))
    assert {"v.patch_embd.weight", "v.position_embd.weight", "v.post_ln.weight",
            "mm.input_projection.weight", "mm.soft_emb_norm.weight", "v.blk.0.attn_q.weight",
            "v.blk.0.ffn_up.weight", "v.blk.0.ln1.bias"} <= names


def test_gemma_norms_are_stored_plus_one(tiny_vlm_checkpoint: Path, converted: Any) -> None:
    from safetensors.numpy import load_file

    source = load_file(str(tiny_vlm_checkpoint / "model.safetensors"))
    stored = tensors(converted.model)
    text = "language_model.model."
    assert np.allclose(stored["blk.0.attn_norm.weight"], source[text + "layers.0.input_layernorm.weight"] + 1)
    assert np.allclose(stored["blk.1.attn_k_norm.weight"], source[text + "layers.1.self_attn.k_norm.weight"] + 1)
    assert np.allclose(stored["output_norm.weight"], source[text + "norm.weight"] + 1)
    projector = tensors(converted.mmproj)
    assert np.allclose(projector["mm.soft_emb_norm.weight"],
                       source["multi_modal_projector.mm_soft_emb_norm.weight"] + 1)
    # SigLIP LayerNorms are ordinary: stored as they are.
    assert np.allclose(projector["v.blk.0.ln1.weight"],
                       source["vision_tower.encoder.layers.0.layer_norm1.weight"])


def test_q4_k_m_really_quantizes_with_llama_cpp(tmp_path: Path) -> None:
    """Rows of 256 (the k-quant block) so llama.cpp's Q4_K_M mix applies."""
    from medgem.demo.build import Shape, build_checkpoint

    shape = Shape(hidden=256, intermediate=512, heads=2, kv_heads=1, head_dim=128,
                  vision_hidden=64, vision_intermediate=128)
    folder = build_checkpoint(tmp_path / "ckpt", shape=shape, dtype="bfloat16")
    result = convert_checkpoint(folder, "q4_k_m", tmp_path / "out", verify=check_conversion)
    kinds = tensor_types(result.model)
    assert kinds["blk.0.ffn_gate.weight"] == "Q4_K"
    assert kinds["token_embd.weight"] == "Q6_K"
    assert fields(result.model)["general.file_type"] == 15
    assert not (tmp_path / "out" / "model.unquantized.gguf").exists()
    assert "tokenizer matches" in result.check


def test_cli_convert_q8_0_in_a_subprocess(tiny_text_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8"
    result = run_cli("convert", str(tiny_text_checkpoint), "--quant", "q8_0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    # Not a terminal: no progress bars, only the result on stdout.
    assert "quantizing" not in result.stderr and "check:  tokenizer matches" in result.stdout
    assert "llama_model_loader" not in result.stderr  # llama.cpp's own log stays quiet
    assert (out / "model.gguf").is_file() and not (out / "mmproj.gguf").exists()  # text-only
    assert fields(out / "model.gguf")["general.file_type"] == 7
    answer = run_cli("ask", "--model", str(out), "--max-new-tokens", "3", "Hello")
    assert answer.returncode == 0, answer.stderr
    assert "llamacpp" in answer.stderr


def test_bad_inputs_get_one_actionable_error(tmp_path: Path, tiny_vlm_checkpoint: Path) -> None:
    from medgem.demo.build import demo_gguf_path

    with pytest.raises(InputError, match="already a GGUF"):
        convert_checkpoint(demo_gguf_path(), "f16", tmp_path / "x")
    with pytest.raises(InputError, match="unknown quantization"):
        convert_checkpoint(tiny_vlm_checkpoint, "q3_k", tmp_path / "x")
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(NotACheckpointError, match="not MedGemma"):
        convert_checkpoint(other, "f16", tmp_path / "x")
    result = run_cli("convert", str(other))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_sentencepiece_model_is_read_exactly() -> None:
    """A hand-built SentencePiece ModelProto: pieces {1: piece, 2: score, 3: type}."""

    def piece(text: str, score: float, kind: int | None) -> bytes:
        body = b"\x0a" + bytes([len(text.encode())]) + text.encode() + b"\x15" + struct.pack("<f", score)
        if kind is not None:
            body += b"\x18" + bytes([kind])
        return b"\x0a" + bytes([len(body)]) + body

    proto = piece("<pad>", 0.0, 3) + piece("▁the", -1.5, None) + piece("  ", 0.0, 4) + b"\x12\x02\x08\x01"
    tokens, scores, types = read_sentencepiece(proto)
    assert tokens == ["<pad>", "▁the", "  "]
    assert scores == [0.0, -1.5, 0.0]
    assert types == [3, 1, 4]


def test_cli_convert_shows_progress_bars_on_a_terminal(tiny_text_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    """stderr on a pseudo-terminal, as a person runs it: tqdm bars that reach 100%."""
    import fcntl
    import os
    import pty
    import subprocess
    import sys
    import termios

    from conftest import REPO

    primary, secondary = pty.openpty()
    # A terminal 100 columns wide, as a person's is (a new pty has 0 columns: bars print nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-m", "medgem", "convert", str(tiny_text_checkpoint), "--quant", "q8_0",
         "--out", str(tmp_path / "q8")], stdout=subprocess.PIPE, stderr=secondary, cwd=REPO)
    os.close(secondary)
    shown = b""
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        shown += data
    assert child.wait(timeout=300) == 0
    text = shown.decode(errors="replace")
    assert "writing model.unquantized.gguf" in text and "tensor" in text
    assert "quantizing to q8_0" in text and "100%" in text.split("quantizing to q8_0")[-1]
