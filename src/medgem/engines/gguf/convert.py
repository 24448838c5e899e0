"""HF checkpoint -> GGUF: ``model.gguf`` (Gemma 3 text, quantized) + ``mmproj.gguf`` (vision).

The vision tower and projector come from the same checkpoint as the text weights: MedGemma's
encoder is not base Gemma 3's, and a base Gemma 3 mmproj silently loses the medical vision.

Steps: read the config and the tokenizer; stream every tensor into an unquantized GGUF
(bf16 stays bf16, so nothing is lost before quantizing); quantize it with llama.cpp's own
quantizer (Q4_K_M, Q8_0) or keep it (f16); write the mmproj in f16; then load both back with
the llama.cpp engine and check the tokenizer and one generation step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.engines.gguf.write import PlannedTensor, gguf_target, read_tokenizer, write_gguf
from medgem.engines.options import LlamaCppOptions
from medgem.errors import ConversionError, InputError, NotACheckpointError, require
from medgem.resolve import checkpoint_chat_template, resolve_checkpoint

stages = logging.getLogger("medgem.progress")  # a terminal's stage line shows these

# quant name -> llama_ftype for llama.cpp's quantizer; None = written directly.
QUANTS: dict[str, int | None] = {"f16": None, "q8_0": 7, "q4_k_m": 15}


@dataclass(frozen=True)
class ConversionResult:
    model: Path
    mmproj: Path | None
    quant: str
    seconds: float
    model_bytes: int
    mmproj_bytes: int
    check: str


def convert_checkpoint(spec: str | os.PathLike[str], quant: str = "q4_k_m", out: Path | None = None,
                       *, progress: bool = False,
                       verify: Callable[[Path, Path, Path | None], str] | None = None,
                       threads: int | None = None,
                       llamacpp: LlamaCppOptions | None = None) -> ConversionResult:
    """Convert a MedGemma / Gemma 3 checkpoint to GGUF.

    Args:
        spec: checkpoint folder, variant key or hub id (resolved like every medgem command).
        quant: "q4_k_m", "q8_0" or "f16".
        out: output folder (default: ``<checkpoint name>-gguf-<quant>`` in the working folder).
        progress: show progress bars with ETA on stderr (only when it is a terminal).
        verify: checks the result, given (checkpoint folder, model.gguf, mmproj.gguf or None),
            and says how it went (``medgem convert`` passes llama.cpp's
            ``medgem.engines.llamacpp.verify.check_conversion``); None: not checked.
        threads: quantizer threads (default: all cores).
        llamacpp: the native settings the quantizer runs with (CPU backend, probe).

    Raises:
        InputError: an unknown quantization, or a GGUF given as input.
        NotACheckpointError: not a Gemma 3 checkpoint.
        MissingDependencyError: gguf, safetensors or llama-cpp-python missing.
        ConversionError: the result failed its check.
    """
    if quant not in QUANTS:
        raise InputError(f"unknown quantization '{quant}'", f"use one of: {', '.join(QUANTS)}")
    for module in ("gguf", "safetensors", "torch"):
        require(module, "hf", "medgem convert")
    if QUANTS[quant] is not None:
        require("llama_cpp", "llamacpp", "medgem convert", "llama-cpp-python")
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(spec)
    if checkpoint.format != "hf":
        raise InputError(f"'{checkpoint.path.name}' is already a GGUF file",
                         "convert takes a Hugging Face checkpoint folder or id")
    folder = checkpoint.path
    stages.debug(f"reading {folder.name}")
    out = out or Path.cwd() / f"{checkpoint.model_id.replace('/', '--')}-gguf-{quant}"
    out.mkdir(parents=True, exist_ok=True)
    config = _config(folder)
    tensors = _tensor_index(folder)
    text_plan, vision_plan = _plan(tensors, quant)
    model_path = out / "model.gguf"
    raw_path = model_path if QUANTS[quant] is None else out / "model.unquantized.gguf"
    write_gguf(raw_path, "gemma3", lambda w: _text_metadata(w, folder, config, checkpoint.model_id),
               text_plan, _tensor_bar(progress, raw_path.name, len(text_plan)))
    if (quant_code := QUANTS[quant]) is not None:
        n_params = sum(math.prod(t.shape) for t in text_plan)
        _quantize(raw_path, model_path, quant_code, n_params, threads, progress, quant,
                  llamacpp or LlamaCppOptions())
        raw_path.unlink()
    mmproj_path: Path | None = None
    if vision_plan:
        mmproj_path = out / "mmproj.gguf"
        write_gguf(mmproj_path, "clip", lambda w: _vision_metadata(w, folder, config),
                   vision_plan, _tensor_bar(progress, mmproj_path.name, len(vision_plan)))
    if verify is not None:
        stages.debug("checking the result: the tokenizer and one step on llama.cpp")
    check = verify(folder, model_path, mmproj_path) if verify is not None else "not checked"
    return ConversionResult(
        model=model_path, mmproj=mmproj_path, quant=quant,
        seconds=time.perf_counter() - started, model_bytes=model_path.stat().st_size,
        mmproj_bytes=mmproj_path.stat().st_size if mmproj_path else 0, check=check,
    )


# --- reading the checkpoint --------------------------------------------------------------------


def _config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise NotACheckpointError(f"'{folder}' has no readable config ({exc})",
                                  "re-download the checkpoint") from exc


def _tensor_index(folder: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """HF tensor name -> (file, shape, safetensors dtype), over all shards."""
    from safetensors import safe_open

    index: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise NotACheckpointError(f"'{folder}' has no *.safetensors weights",
                                  "convert needs safetensors weights; re-download the checkpoint")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                piece = handle.get_slice(name)
                index[name] = (file, tuple(piece.get_shape()), str(piece.get_dtype()))
    return index


def _plan(index: dict[str, tuple[Path, tuple[int, ...], str]], quant: str
          ) -> tuple[list[PlannedTensor], list[PlannedTensor]]:
    text: list[PlannedTensor] = []
    vision: list[PlannedTensor] = []
    for name in sorted(index, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]):
        file, shape, dtype = index[name]
        try:
            target = gguf_target(name)
        except KeyError as exc:
            raise NotACheckpointError(
                f"unexpected tensor '{name}': this is not a Gemma 3 checkpoint medgem can convert",
                "convert MedGemma or Gemma 3 checkpoints (Gemma3ForConditionalGeneration or "
                "Gemma3ForCausalLM)",
            ) from exc
        if target is None:
            continue
        kind = _ggml_type(target.name, shape, dtype, quant, target.part)
        loader = _loader(file, name, kind, target.gemma_norm)
        (text if target.part == "text" else vision).append(
            PlannedTensor(target.name, shape, kind, loader))
    if not text:
        raise NotACheckpointError("the checkpoint holds no Gemma 3 text weights",
                                  "convert a MedGemma / Gemma 3 checkpoint")
    return text, vision


def _ggml_type(name: str, shape: tuple[int, ...], dtype: str, quant: str, part: str) -> str:
    """Norms, biases and position embeddings in F32; matrices in F16, or kept in BF16 when the
    file is only an intermediate for the quantizer (bf16 -> f16 could overflow and loses bits)."""
    if len(shape) == 1 or name.endswith((".bias", "position_embd.weight")):
        return "F32"
    if part == "text" and quant != "f16":
        return "BF16" if dtype == "BF16" else "F32" if dtype == "F32" else "F16"
    return "F16"


def _loader(file: Path, name: str, kind: str, gemma_norm: bool) -> Callable[[], Any]:
    def load() -> Any:
        import torch
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            tensor = handle.get_tensor(name)
        if gemma_norm:
            tensor = tensor.float() + 1.0  # Gemma's RMSNorm scales by (1 + w)
        if kind == "BF16":
            return tensor.to(torch.bfloat16).view(torch.int16).numpy()
        return tensor.to(torch.float32 if kind == "F32" else torch.float16).numpy()

    return load


# --- metadata ----------------------------------------------------------------------------------


def _text_metadata(writer: Any, folder: Path, config: Any, model_id: str) -> None:
    text = getattr(config, "text_config", config)
    arch = "gemma3"
    writer.add_name(model_id)
    written = json.loads((folder / "config.json").read_text())  # with medgem's own keys
    if demo := str((written.get("medgem_demo") or {}).get("id", "")):
        writer.add_string("medgem.demo", demo)  # random-weight/demo models stay labelled as such
    adapter = written.get("medgem_adapter") or {}
    if adapter:  # a merged fine-tune keeps naming the adapter it holds (see medgem.adapters)
        writer.add_string("medgem.adapter.name", str(adapter["name"]))
        writer.add_string("medgem.adapter.sha256", str(adapter["sha256"]))
    writer.add_file_type(1)
    for key, value in (
        ("context_length", text.max_position_embeddings), ("embedding_length", text.hidden_size),
        ("block_count", text.num_hidden_layers), ("feed_forward_length", text.intermediate_size),
        ("attention.head_count", text.num_attention_heads),
        ("attention.head_count_kv", text.num_key_value_heads),
        ("attention.key_length", text.head_dim), ("attention.value_length", text.head_dim),
    ):
        writer.add_uint32(f"{arch}.{key}", int(value))
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", float(text.rms_norm_eps))
    writer.add_uint32(f"{arch}.attention.sliding_window", int(text.sliding_window))
    layer_types = list(getattr(text, "layer_types", None) or [])
    if layer_types:
        writer.add_array(f"{arch}.attention.sliding_window_pattern",
                         [kind == "sliding_attention" for kind in layer_types])
    full, local = _rope(text)
    writer.add_float32(f"{arch}.rope.freq_base", full["rope_theta"])
    writer.add_float32(f"{arch}.rope.freq_base_swa", local["rope_theta"])
    if full.get("rope_type") == "linear" and full.get("factor"):
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(full["factor"]))
    for softcapping in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(text, softcapping, None):
            writer.add_float32(f"{arch}.{softcapping}", float(getattr(text, softcapping)))
    if int(getattr(text, "query_pre_attn_scalar", text.head_dim)) != int(text.head_dim):
        writer.add_float32(f"{arch}.attention.scale", 1.0 / math.sqrt(float(text.query_pre_attn_scalar)))
    tokenizer = read_tokenizer(folder, int(text.vocab_size))
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_string("tokenizer.ggml.pre", "default")
    writer.add_array("tokenizer.ggml.tokens", tokenizer.tokens)
    writer.add_array("tokenizer.ggml.scores", tokenizer.scores)
    writer.add_array("tokenizer.ggml.token_type", tokenizer.types)
    for key, value in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id),
                       ("unknown", tokenizer.unk_id), ("padding", tokenizer.pad_id)):
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", value)
    if "<end_of_turn>" in tokenizer.tokens[:1024]:
        writer.add_uint32("tokenizer.ggml.eot_token_id", tokenizer.tokens.index("<end_of_turn>"))
    for key, flag in (("bos_token", True), ("sep_token", False), ("eos_token", False),
                      ("space_prefix", False)):
        writer.add_bool(f"tokenizer.ggml.add_{key}", flag)
    template = checkpoint_chat_template(folder)
    if template:
        writer.add_string("tokenizer.chat_template", template)


def _rope(text: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full-attention rope, sliding-attention rope) from either config generation."""
    params = getattr(text, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        return dict(params["full_attention"]), dict(params["sliding_attention"])
    full: dict[str, Any] = {"rope_theta": float(getattr(text, "rope_theta", 1_000_000.0))}
    scaling = getattr(text, "rope_scaling", None)
    if isinstance(scaling, dict):
        full.update(scaling)
    return full, {"rope_theta": float(getattr(text, "rope_local_base_freq", 10_000.0))}


def _image_normalisation(folder: Path) -> tuple[list[float], list[float]]:
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get("image_processor", data)
            if "image_mean" in data:
                return list(data["image_mean"]), list(data["image_std"])
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def _vision_metadata(writer: Any, folder: Path, config: Any) -> None:
    vision = config.vision_config
    text = config.text_config
    patches_per_side = int(vision.image_size) // int(vision.patch_size)
    tokens_per_side = math.isqrt(int(config.mm_tokens_per_image))
    mean, std = _image_normalisation(folder)
    writer.add_file_type(1)
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    for key, value in (
        ("image_size", vision.image_size), ("patch_size", vision.patch_size),
        ("embedding_length", vision.hidden_size), ("feed_forward_length", vision.intermediate_size),
        ("block_count", vision.num_hidden_layers), ("projection_dim", text.hidden_size),
        ("attention.head_count", vision.num_attention_heads),
    ):
        writer.add_uint32(f"clip.vision.{key}", int(value))
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", float(vision.layer_norm_eps))
    writer.add_array("clip.vision.image_mean", [float(x) for x in mean])
    writer.add_array("clip.vision.image_std", [float(x) for x in std])
    writer.add_uint32("clip.vision.projector.scale_factor", patches_per_side // tokens_per_side)


# --- quantizing and checking -------------------------------------------------------------------


def _bar(progress: bool, **options: Any) -> Any:
    """A tqdm bar on stderr; silent unless asked for and stderr is a terminal."""
    from tqdm import tqdm

    if progress:  # the stage line steps aside while a bar draws (medgem.cli.progress)
        stages.debug(str(options.get("desc", "")), extra={"bar": True})
    return tqdm(disable=None if progress else True, file=sys.stderr, dynamic_ncols=True, **options)


def _tensor_bar(progress: bool, label: str, total: int) -> Callable[[int, int, str], None]:
    bar = _bar(progress, total=total, unit="tensor", desc=f"writing {label}")

    def report(done: int, total: int, name: str) -> None:
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return report


def _quantize(source: Path, target: Path, ftype: int, n_params: int, threads: int | None,
              progress: bool, quant: str, native: LlamaCppOptions) -> None:
    """llama.cpp's quantizer, its output's growth shown as a bar against the expected size."""
    from medgem.engines.llamacpp.native import import_llama_cpp
    from medgem.engines.llamacpp.probe import ensure_runs_here
    from medgem.hardware import usable_cores

    if native.probe:  # the quantizer is native code too: prove it runs here in a child first
        ensure_runs_here(cpu_variant=native.cpu_variant, repack=native.repack)
    # its per-tensor log is silenced; the bar shows progress
    llama_cpp, _ = import_llama_cpp(native.cpu_variant, logs=native.native_logs)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or usable_cores()
    expected = int(n_params * (5.2 if ftype == 15 else 8.5) / 8)  # bits per weight
    bar = _bar(progress, total=expected, unit="B", unit_scale=True, desc=f"quantizing to {quant}")
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            size = target.stat().st_size if target.exists() else 0
            bar.update(min(size, expected) - bar.n)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    status = -1
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                                llama_cpp.byref(params))
    finally:
        done.set()
        watcher.join()
        if status == 0:
            bar.total = bar.n = target.stat().st_size  # the real size: the bar ends at 100%
            bar.refresh()
        bar.close()
    if status != 0:
        raise ConversionError(f"llama.cpp's quantizer failed (status {status})",
                              "check free disk space, or try --quant f16")
