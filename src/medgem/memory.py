"""How much memory a model will take, and whether it fits, before anything is loaded."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.errors import ResourceError
from medgem.hardware import GIB, Hardware

# Bytes per parameter of the weights as held in memory.
BYTES_PER_PARAM: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "8bit": 1.05,  # int8 weights plus per-row scales (bitsandbytes LLM.int8)
    "4bit": 0.56,  # NF4 with double quantization, plus bf16 layers left unquantized
    "q8_0": 1.0625,  # GGUF: 34 bytes per 32 weights
    "q4_k_m": 0.64,  # GGUF Q4_K_M mix, embedding in Q6_K (measured: 2.49 GB file for 4B)
    "f16": 2.0,
}
# Activations, KV cache for a few thousand tokens, allocator slack, the runtime itself.
OVERHEAD_FRACTION = 0.12
OVERHEAD_BYTES = int(0.6 * GIB)


@dataclass(frozen=True)
class Estimate:
    precision: str
    weight_bytes: int
    total_bytes: int

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB


def safetensors_tensors(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors (name -> dtype, shape, offsets), from its header alone."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


def count_parameters(folder: Path) -> int:
    """Parameters in a checkpoint, from the safetensors headers (no tensor is read)."""
    return sum(math.prod(entry["shape"]) for path in sorted(folder.glob("*.safetensors"))
               for entry in safetensors_tensors(path).values())


def estimate(parameters: int, precision: str) -> Estimate:
    weights = int(parameters * BYTES_PER_PARAM[precision])
    return Estimate(precision, weights, int(weights * (1 + OVERHEAD_FRACTION)) + OVERHEAD_BYTES)


def budget_for(hardware: Hardware, device: str) -> tuple[str, int]:
    """(what, bytes available) on the target device."""
    if device.startswith("cuda") and hardware.gpus:
        index = int(device.split(":")[1]) if ":" in device else 0
        gpu = hardware.gpus[min(index, len(hardware.gpus) - 1)]
        return f"GPU {gpu.index} ({gpu.name}) free memory", gpu.free_bytes
    return "available RAM", hardware.ram_available


def check_fits(parameters: int, precision: str, device: str, hardware: Hardware) -> Estimate:
    """Refuse to load weights that will not fit, naming an option that would.

    Raises:
        ResourceError: with the need, the budget and the alternative.
    """
    need = estimate(parameters, precision)
    what, budget = budget_for(hardware, device)
    if need.total_bytes <= budget:
        return need
    options = []
    on_gpu = device.startswith("cuda")
    for alternative in (["bfloat16", "8bit", "4bit"] if on_gpu else ["bfloat16"]):
        if alternative != precision and estimate(parameters, alternative).total_bytes <= budget:
            flag = f"--quantize {alternative}" if "bit" in alternative else f"--dtype {alternative}"
            options.append(f"{flag} ({estimate(parameters, alternative).total_gib:.1f} GiB)")
    if not on_gpu:
        gguf = estimate(parameters, "q4_k_m")
        if gguf.total_bytes <= budget:
            options.append(f"a Q4_K_M GGUF via `medgem convert` ({gguf.total_gib:.1f} GiB)")
    hint = "try " + " or ".join(options) if options else "use a machine with more memory"
    raise ResourceError(
        f"the model needs about {need.total_gib:.1f} GiB in {precision} but {what} is "
        f"{budget / GIB:.1f} GiB",
        hint,
    )
