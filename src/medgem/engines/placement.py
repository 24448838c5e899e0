"""Where transformers' weights go and in what precision: device, dtype and bitsandbytes
quantization, shared by the transformers engine and LoRA tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medgem.errors import EngineUnavailableError, InputError, require
from medgem.hardware import detect_hardware
from medgem.memory import count_parameters, estimate

if TYPE_CHECKING:
    from medgem.resolve import Checkpoint


def placement(device: str, dtype: str, checkpoint: Checkpoint) -> tuple[str, Any]:
    """(device, torch dtype) for ``device`` and ``dtype`` as asked ("auto" for either): bf16 on
    GPUs that have it, float32 on CPUs when it fits (bf16 is emulated on most of them).

    Raises:
        EngineUnavailableError: CUDA asked for without a CUDA GPU.
        InputError: an unknown dtype.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailableError(
            "--device cuda was asked for but no CUDA GPU is available",
            "use --device cpu (or a GGUF with --engine llamacpp for speed)",
        )
    if dtype != "auto":
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise InputError(f"unknown dtype '{dtype}'", "use bfloat16, float16 or float32")
        return device, torch_dtype
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPUs: float32 when it fits. bf16 matmuls are emulated on most CPUs (measured 213 s for the
    # 4B vision tower alone) and even with AVX512-BF16 PyTorch falls back for many ops.
    need = estimate(count_parameters(checkpoint.path), "float32").total_bytes
    if need <= detect_hardware().ram_available:
        return device, torch.float32
    return device, torch.bfloat16


def quantization_config(quantize: str | None, device: str) -> Any:
    """transformers' BitsAndBytesConfig for "4bit" (NF4, double quantization) or "8bit"; None
    for full precision.

    Raises:
        InputError: an unknown quantization.
        EngineUnavailableError: no CUDA GPU (bitsandbytes needs one).
        MissingDependencyError: bitsandbytes is not installed.
    """
    if quantize is None:
        return None
    if quantize not in ("4bit", "8bit"):
        raise InputError(f"unknown quantization '{quantize}'", "use --quantize 4bit or 8bit")
    if not device.startswith("cuda"):
        raise EngineUnavailableError(
            f"--quantize {quantize} uses bitsandbytes, which needs a CUDA GPU",
            "on a CPU, convert to GGUF instead: medgem convert CHECKPOINT --quant q4_k_m, then "
            "run the .gguf (engine llamacpp)",
        )
    require("bitsandbytes", "cuda", f"--quantize {quantize}")
    import torch
    import transformers

    if quantize == "4bit":
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    return transformers.BitsAndBytesConfig(load_in_8bit=True)
