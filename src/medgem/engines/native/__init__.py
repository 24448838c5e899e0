"""medgem's own native kernel: AVX512-BF16 flash attention for the PyTorch vision tower.

``flash_bf16.c`` beside this file is compiled once per machine with its C compiler (``$CC``,
else ``cc``/``gcc``; ~1 s) into the medgem cache, keyed by the source, the flags and the CPU.
Before this process loads it, a child process (``python -m medgem.engines.native LIBRARY``)
runs it at uneven shapes and compares it with float32 attention: an illegal instruction, a
crash or a wrong answer there marks the library unusable for this CPU (kept beside it, with the
reason) and the tower keeps PyTorch's attention. No compiler, no AVX512-BF16, a failed build:
the same, with the reason in :func:`flash_status`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.hardware import cpu_flags, cpu_name

FLASH = "flash-bf16"
SOURCE = Path(__file__).with_name("flash_bf16.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-fopenmp",
         "-shared", "-fPIC")
CHILD_TIMEOUT_S = 120.0
# The child's bound: relative error against float32 attention on bf16-rounded inputs, 1.3x
# PyTorch's bf16 SDPA's own (measured 0.95-0.97x) plus a floor for tiny shapes.
CHILD_BOUND = 1.3


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def library_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + cpu_name().encode())
    return cache_dir() / "native" / f"flash_bf16-{digest.hexdigest()[:16]}.so"


def _build(target: Path) -> str | None:
    """Compile the kernel into ``target``; None on success, else why not (one line)."""
    compiler = _compiler()
    if compiler is None:
        return "no C compiler (cc, gcc or $CC) to build it"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            run = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE), "-lm"],
                                 capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{compiler} failed: {error}"
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            return f"{compiler} could not build it: {last}"
        os.replace(built, target)  # atomic: another process sees all of it or nothing
    return None


def _prove(library: Path) -> str | None:
    """Run the library in a child process; None when it ran and agreed, else why not."""
    try:
        run = subprocess.run([sys.executable, "-m", "medgem.engines.native", str(library)],
                             capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"its check did not finish in {CHILD_TIMEOUT_S:.0f} s"
    if run.returncode == 0:
        return None
    if run.returncode < 0:
        return f"its check was killed by signal {-run.returncode} on this CPU"
    last = (run.stdout.strip().splitlines() or run.stderr.strip().splitlines() or ["no message"])[-1]
    return f"its check failed: {last}"


@functools.cache
def _load() -> tuple[Any, str]:
    """(the loaded function or None, why not)."""
    if "avx512_bf16" not in cpu_flags():
        return None, "this CPU has no AVX512-BF16"
    library = library_path()
    verdict = library.with_suffix(".verdict")
    if not library.exists():
        problem = _build(library)
        if problem is not None:
            return None, problem
    if verdict.exists():
        problem = None if verdict.read_text() == "ok" else verdict.read_text()
    else:
        problem = _prove(library)
        try:
            verdict.write_text(problem or "ok")
        except OSError:
            pass  # an unwritable cache only costs the check again next time
    if problem is not None:
        return None, problem
    return _bind(library), "ok"


def _bind(library: Path) -> Any:
    function = ctypes.CDLL(str(library)).medgem_flash_bf16
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def flash_status() -> str:
    """"ok" when the kernel runs here, else why it does not (one line)."""
    return _load()[1]


def flash_available() -> bool:
    return _load()[0] is not None


def flash_attention(query: Any, key: Any, value: Any, scale: float, threads: int | None = None,
                    function: Any = None) -> Any:
    """softmax(Q Kᵀ · scale) V without a mask through the native kernel.

    Args:
        query: (batch, heads, queries, head_dim), any float dtype (rounded to bf16 on the way in).
        key, value: (batch, heads, keys, head_dim).
        scale: the factor on the scores.
        threads: OpenMP threads (default: torch's).
        function: the bound kernel (the child check passes its own); default: this process's.

    Returns:
        (batch, heads, queries, head_dim) in the query's dtype.
    """
    import torch

    kernel = function if function is not None else _load()[0]
    if kernel is None:
        raise RuntimeError(f"medgem's flash attention is not available here: {flash_status()}")
    batch, heads, n_queries, head_dim = query.shape
    n_keys = key.shape[2]
    q, k, v = (t.to(torch.bfloat16).contiguous() for t in (query, key, value))
    out = torch.empty((batch, heads, n_queries, head_dim), dtype=torch.float32)
    for b in range(batch):
        failed = kernel(q[b].data_ptr(), k[b].data_ptr(), v[b].data_ptr(), out[b].data_ptr(),
                        heads, n_queries, n_keys, head_dim, float(scale),
                        threads or torch.get_num_threads())
        if failed:
            raise MemoryError("medgem's flash attention could not allocate its buffers")
    return out.to(query.dtype)


def check(library: Path) -> str | None:
    """What the child runs: uneven shapes (short last blocks of rows and keys, odd head_dim)
    against float32 attention; None when every one agrees within the bound, else the shape."""
    import torch

    function = _bind(library)
    generator = torch.Generator().manual_seed(0)
    for heads, n_queries, n_keys, head_dim in ((2, 7, 300, 9), (3, 61, 257, 72), (1, 130, 64, 16)):
        q, k, v = (torch.randn((1, heads, n, head_dim), generator=generator) * 2
                   for n in (n_queries, n_keys, n_keys))
        scale = head_dim ** -0.5
        exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        hq, hk, hv = (t.to(torch.bfloat16) for t in (q, k, v))
        reference = torch.nn.functional.scaled_dot_product_attention(hq, hk, hv, scale=scale).float()
        ours = flash_attention(hq, hk, hv, scale, 1, function=function).float()
        bound = CHILD_BOUND * float((reference - exact).norm() / exact.norm()) + 1e-4
        error = float((ours - exact).norm() / exact.norm())
        if not error < bound:
            return f"shape {(heads, n_queries, n_keys, head_dim)}: error {error:.4g} > {bound:.4g}"
    return None

