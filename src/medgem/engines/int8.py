"""The int8 linear layer the PyTorch vision tower runs on CPUs without fast floating-point
matrix units: fbgemm's dynamic int8 GEMM (vpmaddubsw on AVX2, VNNI where the CPU has it), weights
int8 per output channel, each token's activations scaled to their own range. Why this op and
what it costs in agreement: see ``engines/llamacpp/vision_torch.py``; the measurement that picks
it per CPU: ``engines/llamacpp/kernels.choose_tower_dtype``. Kept apart from the tower so the
measurement and the tower both use it without importing each other.
"""

from __future__ import annotations

import functools
from typing import Any

from medgem.hardware import best_seconds

INT8_LEVELS = 127  # symmetric: -127..127, so a value and its negation quantize alike


def int8_available() -> bool:
    """Whether this torch has fbgemm's dynamic int8 linear (x86 builds do; others may not)."""
    import torch

    engines = set(torch.backends.quantized.supported_engines)
    return bool({"fbgemm", "x86"} & engines) and hasattr(torch.ops.quantized, "linear_dynamic")


def pack_int8(weight: Any) -> Any:
    """fbgemm's packed int8 form of a linear weight, one symmetric scale per output channel.

    Args:
        weight: (out, in) float.

    Returns:
        the packed weight for :func:`int8_linear` (no bias: it is added after the rescaling).
    """
    import warnings

    import torch

    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1).clamp(min=1e-12) / INT8_LEVELS).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.int64)
    with warnings.catch_warnings():  # quantized tensors are deprecated; fbgemm packs from one
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None)


def int8_linear(x: Any, packed: Any, bias: Any | None) -> Any:
    """x Wᵀ + b through fbgemm's int8 GEMM (vpmaddubsw on AVX2, VNNI where the CPU has it).

    fbgemm quantizes its input with one scale for the whole matrix (and 7 bits on x86, so the
    u8 x s8 pair sums cannot saturate); each token's row is divided by its own largest magnitude
    first and multiplied back after, so every token gets the full range of its own scale.

    Args:
        x: (tokens, in) float32.
        packed: from :func:`pack_int8`.
        bias: (out,) float32 or None.

    Returns:
        (tokens, out) float32.
    """
    import torch

    row_max = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)  # (tokens, 1)
    out = torch.ops.quantized.linear_dynamic(x / row_max, packed, True).mul_(row_max)
    return out.add_(bias) if bias is not None else out


@functools.cache
def _int8_module() -> Any:
    """nn.Module class for :func:`int8_linear` (made on first use: torch is imported lazily)."""
    import torch

    class Int8Linear(torch.nn.Module):  # type: ignore[misc]
        """A frozen nn.Linear in int8; same input and output shapes, float32 in and out."""

        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.packed = pack_int8(linear.weight)
            bias = linear.bias.detach().float().clone() if linear.bias is not None else None
            self.register_buffer("bias", bias)
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x: Any) -> Any:  # (..., in) -> (..., out)
            flat = x.reshape(-1, self.in_features)
            out = int8_linear(flat, self.packed, self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)

    return Int8Linear


def quantize_linears(module: Any) -> int:
    """Replace every nn.Linear under ``module`` by its W8A8 form, in place; returns how many."""
    import torch

    int8_type = _int8_module()
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, int8_type(child))
                replaced += 1
    return replaced


def measure_linear(dtypes: tuple[str, ...], rows: int = 1024, hidden: int = 1152,
                   intermediate: int = 4304, repeats: int = 5) -> dict[str, float]:
    """Seconds per call of the tower's MLP-up layer, (rows, hidden) @ (hidden, intermediate), in
    each precision: best of ``repeats`` after a warm-up (oneDNN builds its kernels on the first
    call). int8's time includes scaling and quantizing the activations and scaling the sums
    back, as the tower pays them. Every row costs the same, so ``rows`` only bounds the work (1024 rows: 10
    GFLOP, ~0.15 s at 67 GFLOP/s). On a busy 2-core Zen 1, 3 repeats at 512 rows once gave int8
    1.13x where quieter runs gave 1.6-2.3x: hence 5 repeats of 1024.

    Returns:
        {"float32": s, "int8": s, ...} for ``dtypes``.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn((rows, hidden), generator=generator)
    linear = torch.nn.Linear(hidden, intermediate)
    times: dict[str, float] = {}
    with torch.inference_mode():
        for dtype in dtypes:
            if dtype == "int8":
                layer, inputs = _int8_module()(linear), x
            else:
                layer, inputs = linear.to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
            times[dtype] = best_seconds(functools.partial(layer, inputs), repeats)
            linear.float()
    return times
