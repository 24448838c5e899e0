"""A PEFT LoRA adapter -> a GGUF LoRA in llama.cpp's own adapter format.

The file holds ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha``
and, per adapted linear layer, ``<base tensor>.lora_a`` [r, in] and ``<base tensor>.lora_b``
[out, r] under the base GGUF's tensor names (the same mapping `medgem convert` writes the base
model with). llama.cpp scales B·A by alpha / r, as PEFT does; rank-stabilised adapters
(alpha / sqrt(r)) are written with the alpha that gives the same scale.

llama.cpp applies LoRA to the text model only. Adapters that also changed the vision tower (PEFT's
"all-linear" includes it) get those deltas merged into a new ``mmproj.gguf``. Whole replaced
modules (the notebook's ``lm_head``/``embed_tokens``) have no LoRA form: those adapters are
merged into a full checkpoint and converted as a model instead (``merge=True``).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medgem.adapters import AdapterInfo, find_adapter, save_merged
from medgem.engines.gguf.write import PlannedTensor, gguf_target, write_gguf
from medgem.errors import AdapterError

LORA_FILE = "adapter-lora.gguf"
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class AdapterConversion:
    """What `medgem convert --adapter` wrote.

    Attributes:
        lora: the GGUF LoRA (None when the adapter was merged into a model instead).
        mmproj: a vision projector with the adapter's vision deltas merged, when it has any.
        model: the merged model GGUF (``merge=True`` only).
        tensors: LoRA tensor pairs written.
        seconds: time taken.
    """

    lora: Path | None
    mmproj: Path | None
    model: Path | None
    tensors: int
    seconds: float


def lora_pairs(adapter: AdapterInfo) -> dict[str, dict[str, Any]]:
    """HF module name -> {"A": tensor [r, in], "B": tensor [out, r]} from the adapter file."""
    from safetensors.torch import load_file

    files = sorted(adapter.path.glob("adapter_model*.safetensors"))
    if not files:
        raise AdapterError(f"'{adapter.path}' has no adapter_model.safetensors",
                           "save the adapter with safetensors (PEFT's default)")
    pairs: dict[str, dict[str, Any]] = {}
    for file in files:
        for key, tensor in load_file(str(file)).items():
            match = _PEFT_KEY.match(key)
            if match:
                pairs.setdefault(match["module"], {})[match["part"]] = tensor.float()
    return pairs


def lora_scale_alpha(adapter: AdapterInfo) -> float:
    """The alpha to write so that llama.cpp's alpha / r equals PEFT's scale.

    Raises:
        AdapterError: settings llama.cpp's LoRA cannot express (DoRA, per-layer ranks, biases).
    """
    config = adapter.config
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters have no llama.cpp LoRA form", "merge it instead (--merge)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError("adapters with per-layer ranks or alphas have no single llama.cpp alpha",
                           "merge it instead (--merge)")
    if config.get("bias", "none") != "none":
        raise AdapterError("adapters that train biases have no llama.cpp LoRA form",
                           "merge it instead (--merge)")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha * math.sqrt(r) if config.get("use_rslora") else alpha


def convert_adapter(
    spec: str | Path,
    out: Path | None = None,
    *,
    checkpoint: str | None = None,
    merge: bool = False,
    quant: str = "f16",
    progress: bool = False,
) -> AdapterConversion:
    """Write an adapter for llama.cpp: a GGUF LoRA (plus a merged mmproj for vision deltas), or,
    with ``merge``, a merged model GGUF.

    Args:
        spec: the adapter folder (a `medgem tune --out` folder or a PEFT adapter).
        out: output folder (default: ``gguf`` beside the adapter).
        checkpoint: the base checkpoint (default: the one the adapter records).
        merge: merge into the base and convert the result as a model (`medgem convert`).
        quant: the merged model's quantization (``merge`` only).
        progress: progress bars on a terminal.

    Raises:
        AdapterError: an unfinished or unsupported adapter (with what to do instead).
        NotACheckpointError, MissingDependencyError: as `medgem convert`.
    """
    started = time.perf_counter()
    adapter = find_adapter(spec)
    base = checkpoint or _recorded_base(adapter)
    out = out or (adapter.path.parent / "gguf" if adapter.path.name == "adapter"
                  else Path.cwd() / f"{adapter.name}-gguf")
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        return _merge_and_convert(adapter, base, out, quant, progress, started)
    if adapter.modules_to_save:
        raise AdapterError(
            f"the adapter '{adapter.name}' replaces whole modules ({', '.join(adapter.modules_to_save)}), "
            "which llama.cpp's LoRA format cannot hold",
            "add --merge to write a merged model GGUF instead, or train with --no-save-embeddings",
        )
    alpha = lora_scale_alpha(adapter)
    text: list[PlannedTensor] = []
    vision: dict[str, Any] = {}  # GGUF vision tensor name -> delta (B @ A * scale)
    scale = alpha / int(adapter.config["r"])
    for module, pair in sorted(lora_pairs(adapter).items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"the adapter has lora_A without lora_B (or the reverse) for {module}")
        try:
            target = gguf_target(f"{module}.weight")
        except KeyError as exc:
            raise AdapterError(f"the adapter changes '{module}', which is not a Gemma 3 layer",
                               "convert adapters trained on MedGemma / Gemma 3") from exc
        if target is None:
            raise AdapterError(f"the adapter changes '{module}', which the GGUF ties to the embedding",
                               "merge it instead (--merge)")
        if target.part == "vision":
            vision[target.name] = (pair["B"] @ pair["A"]) * scale
            continue
        for part, suffix in (("A", "lora_a"), ("B", "lora_b")):
            array = pair[part].numpy()
            text.append(PlannedTensor(f"{target.name}.{suffix}", tuple(array.shape), "F32",
                                      _constant(array)))
    if not text and not vision:
        raise AdapterError(f"the adapter '{adapter.name}' holds no LoRA weights")
    lora_path: Path | None = None
    if text:
        lora_path = out / LORA_FILE
        write_gguf(lora_path, "gemma3", lambda w: _lora_metadata(w, adapter, alpha), text)
    mmproj = _merged_mmproj(base, vision, out, progress) if vision else None
    return AdapterConversion(lora_path, mmproj, None, len(text) // 2,
                             time.perf_counter() - started)


def _constant(array: Any) -> Callable[[], Any]:
    return lambda: array


def _recorded_base(adapter: AdapterInfo) -> str:
    base = adapter.marker.get("base_model", {})
    path = base.get("path")
    if path and Path(path).exists():
        return str(path)
    for candidate in (base.get("id"), adapter.config.get("base_model_name_or_path")):
        if candidate:
            return str(candidate)
    raise AdapterError(f"the adapter '{adapter.name}' does not say which model it was trained on",
                       "name the base checkpoint: medgem convert CHECKPOINT --adapter DIR")


def _lora_metadata(writer: Any, adapter: AdapterInfo, alpha: float) -> None:
    writer.add_name(adapter.name)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    # which PEFT adapter this came from, so answers through llama.cpp trace back to it
    writer.add_string("medgem.adapter.name", adapter.name)
    writer.add_string("medgem.adapter.sha256", adapter.sha256)


def _merged_mmproj(base: str, deltas: dict[str, Any], out: Path, progress: bool) -> Path:
    """The base checkpoint's vision projector with the adapter's vision deltas added (f16)."""
    from medgem.engines.gguf.convert import (
        _config,
        _plan,
        _tensor_bar,
        _tensor_index,
        _vision_metadata,
    )
    from medgem.resolve import resolve_checkpoint

    folder = resolve_checkpoint(base).path
    _, plan = _plan(_tensor_index(folder), "f16")

    def with_delta(tensor: PlannedTensor) -> PlannedTensor:
        delta = deltas.get(tensor.name)
        if delta is None:
            return tensor
        load = tensor.load

        def merged() -> Any:  # the projector is written in f16, as `medgem convert` writes it
            return (load().astype("float32") + delta.numpy()).astype("float16")

        return replace(tensor, load=merged)

    merged = [with_delta(t) for t in plan]
    missing = set(deltas) - {t.name for t in merged}
    if missing:
        raise AdapterError(f"the base checkpoint has no vision tensor {sorted(missing)[0]}",
                           "convert with the checkpoint the adapter was trained on")
    path = out / "mmproj.gguf"
    config = _config(folder)
    write_gguf(path, "clip", lambda w: _vision_metadata(w, folder, config), merged,
               _tensor_bar(progress, path.name, len(merged)))
    return path


def _merge_and_convert(adapter: AdapterInfo, base: str, out: Path, quant: str, progress: bool,
                       started: float) -> AdapterConversion:
    from medgem.engines.gguf.convert import convert_checkpoint
    from medgem.resolve import resolve_checkpoint

    checkpoint = resolve_checkpoint(base)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        merged_dir = Path(tmp) / f"{checkpoint.model_id.replace('/', '--')}+{adapter.name}"
        save_merged(adapter, checkpoint.path, checkpoint.multimodal, merged_dir)
        result = convert_checkpoint(merged_dir, quant, out, progress=progress)
    return AdapterConversion(None, result.mmproj, result.model, 0, time.perf_counter() - started)

