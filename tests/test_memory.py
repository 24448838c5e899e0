from __future__ import annotations

import pytest

from medgem.errors import ResourceError
from medgem.hardware import GIB, Gpu, Hardware
from medgem.memory import check_fits, count_parameters, estimate

CPU_16G = Hardware("cpu", 2, False, 24 * GIB, 16 * GIB)
GPU_24G = Hardware("cpu", 8, False, 64 * GIB, 60 * GIB, (Gpu(0, "RTX", 24 * GIB, 23 * GIB, True),))


def test_estimate_adds_overhead_to_weights() -> None:
    e = estimate(4_000_000_000, "bfloat16")
    assert e.weight_bytes == 8_000_000_000
    assert e.total_bytes == int(8_000_000_000 * 1.12) + int(0.6 * GIB)


def test_4b_in_float32_does_not_fit_16g_and_suggests_bf16() -> None:
    with pytest.raises(ResourceError) as info:
        check_fits(4_300_000_000, "float32", "cpu", CPU_16G)
    message = str(info.value)
    assert "available RAM is 16.0 GiB" in message
    assert "--dtype bfloat16" in message


def test_27b_on_a_24g_gpu_suggests_4bit() -> None:
    with pytest.raises(ResourceError) as info:
        check_fits(27_000_000_000, "bfloat16", "cuda", GPU_24G)
    assert "--quantize 4bit" in str(info.value)
    assert "--quantize 8bit" not in str(info.value)  # 27 GB of int8 does not fit 23 GiB either
    assert check_fits(27_000_000_000, "4bit", "cuda", GPU_24G).total_gib < 23


def test_count_parameters_reads_safetensors_headers(tiny_text_checkpoint) -> None:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_text_checkpoint / "model.safetensors"))
    assert count_parameters(tiny_text_checkpoint) == sum(t.numel() for t in tensors.values())
    assert all(t.dtype == torch.float32 for t in tensors.values())
