"""Apply a GGUF LoRA (from `medgem convert --adapter`) in llama.cpp.

Two calls on llama.cpp's C API through llama-cpp-python: ``llama_adapter_lora_init`` loads the
adapter against a loaded model, ``llama_set_adapters_lora`` puts it on a context (before the
first decode, so no KV cache holds states computed without it). The adapter lives as long as the
model; llama.cpp frees it with the model.

The engine calls, after creating its context::

    lora = load_lora(model_ptr, options.adapter)   # llama_model *
    apply_lora(ctx_ptr, lora)                      # llama_context *
    name, digest = lora_identity(options.adapter)  # for ModelInfo.adapter / adapter_sha256
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from medgem.errors import AdapterError, NotACheckpointError, require


def read_lora_header(path: str | Path) -> dict[str, Any]:
    """The adapter GGUF's metadata, checked to be a LoRA.

    Raises:
        AdapterError: not a file, not a GGUF, or a GGUF that is not a LoRA adapter.
    """
    from medgem.engines.gguf.read import read_header

    file = Path(path)
    if not file.is_file():
        raise AdapterError(f"no GGUF adapter at '{path}'",
                           "convert the adapter first: medgem convert --adapter DIR")
    try:
        header = read_header(file, "LoRA adapter").fields
    except NotACheckpointError as exc:
        raise AdapterError(exc.message,
                           "the llama.cpp engine takes the .gguf from `medgem convert --adapter`; "
                           "the hf engine takes the PEFT folder") from exc
    if header.get("general.type") != "adapter" or header.get("adapter.type") != "lora":
        raise AdapterError(f"'{file.name}' is a GGUF model, not a LoRA adapter",
                           "give the adapter-lora.gguf written by `medgem convert --adapter`")
    return header


def lora_identity(path: str | Path) -> tuple[str, str]:
    """(name, sha256 of the file): what answers carry as ModelInfo.adapter / adapter_sha256."""
    header = read_lora_header(path)
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    name = str(header.get("medgem.adapter.name") or header.get("general.name") or Path(path).stem)
    return name, digest.hexdigest()


def load_lora(model: Any, path: str | Path) -> Any:
    """Load a GGUF LoRA against a loaded model.

    Args:
        model: the ``llama_model *`` (llama-cpp-python: ``Llama._model.model``).
        path: the adapter GGUF.

    Returns:
        The ``llama_adapter_lora *``.

    Raises:
        AdapterError: not a LoRA GGUF, or llama.cpp refused it (another architecture or shapes).
    """
    llama_cpp: Any = require("llama_cpp", "llamacpp", "GGUF adapters", "llama-cpp-python")
    header = read_lora_header(path)
    adapter = llama_cpp.llama_adapter_lora_init(model, str(path).encode())
    if not adapter:
        arch = header.get("general.architecture")
        raise AdapterError(
            f"llama.cpp could not apply '{Path(path).name}' to this model (adapter for {arch})",
            "convert the adapter against the same base model the GGUF was converted from",
        )
    return adapter


def apply_lora(context: Any, adapter: Any, scale: float = 1.0) -> None:
    """Put the adapter on a context; call before the context decodes anything.

    Args:
        context: the ``llama_context *`` (llama-cpp-python: ``Llama._ctx.ctx``).
        adapter: from :func:`load_lora`.
        scale: multiplies the adapter's alpha / r (1.0 = as trained).

    Raises:
        AdapterError: llama.cpp refused it.
    """
    import ctypes

    import llama_cpp

    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    status = llama_cpp.llama_set_adapters_lora(context, adapters, 1, scales)
    if status != 0:
        raise AdapterError(f"llama.cpp could not set the adapter on the context (status {status})")
