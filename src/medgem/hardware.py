"""What this machine has: CPU features, RAM, GPUs and their memory, and how fast it runs a call.
No model code."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    bf16: bool


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    cpu_bf16: bool
    ram_total: int
    ram_available: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name, e.g. "AMD EPYC 7B12" ("unknown CPU" off Linux)."""
    return _cpuinfo("model name") or "unknown CPU"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls run natively (AVX512-BF16 or AMX); elsewhere they are emulated, slowly."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) or platform.machine() == "arm64"


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls after a warm-up one (the first builds kernels
    and allocates buffers; a busy machine only ever slows a run, so the best is the measure)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best


def detect_hardware() -> Hardware:
    memory = psutil.virtual_memory()
    return Hardware(
        cpu=_cpuinfo("model name") or platform.processor() or platform.machine(),
        cores=os.cpu_count() or 1,
        cpu_bf16=cpu_has_native_bf16(),
        ram_total=memory.total,
        ram_available=memory.available,
        gpus=tuple(_gpus()),
    )


def _gpus() -> list[Gpu]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        found.append(
            Gpu(index, torch.cuda.get_device_name(index), total, free, torch.cuda.is_bf16_supported())
        )
    return found
