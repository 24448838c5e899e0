"""Kernels chosen by measuring them here once, kept in ``kernels.json`` in the medgem cache per
CPU kind, threads and library versions: where the vision tower runs (llama.cpp's clip or
PyTorch), the PyTorch tower's precision (float32, bfloat16 where the CPU has it natively, int8)
and its attention kernel. Apart from ``speeds``, which keeps what questions cost (speeds.json)
and reads the choices made here to key its figures.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.engines.llamacpp.store import read_store, store_lock, write_store
from medgem.errors import InputError
from medgem.hardware import cpu_flags, cpu_has_native_bf16, cpu_name, usable_cores


def kept_tower_dtype(threads: int, asked: str | None = None, path: Path | None = None) -> str | None:
    """The PyTorch tower's precision without measuring: ``asked`` (the ``vision_dtype``
    option), else what ``choose_tower_dtype`` kept here, else None (not measured yet)."""
    if asked:
        return asked
    entry = _kept(tower_dtype_key(threads), path)
    return str(entry["choice"]) if entry is not None else None


VISION_PATHS = ("auto", "llamacpp", "torch")
# PyTorch's tower must beat the clip by this factor to be picked: it holds twice the memory (the
# weights in torch besides libmtmd's), and int8 costs agreement (see vision_torch).
TORCH_MARGIN = 1.15


def choose_vision(asked: str | None = None, threads: int | None = None,
                  path: Path | None = None) -> tuple[str, str]:
    """(path, why): where this machine runs the vision tower.

    ``asked`` (the ``vision`` option) forces "llamacpp" or "torch". "auto" takes what was
    measured here once (kept in ``kernels.json`` per CPU kind, threads, torch and llama.cpp
    versions): one layer of the 4B's tower at 896 px through llama.cpp's clip (f16, flash
    attention) and through PyTorch in the precision ``choose_tower_dtype`` picked (int8 on CPUs
    without fast float matrix units); PyTorch only when it is ``TORCH_MARGIN`` faster. Nothing here
    measures: ``vision_measure.measure_vision`` does, for ``medgem doctor --measure`` in a child
    process, which ``scripts/install.sh`` runs once at its end (26 s on a 2-core Zen 3, too long
    for a first question to wait on); without
    PyTorch, or with nothing kept, llama.cpp's clip. Earlier figures: on an AVX512-BF16 Zen 5 (2 cores, 4B shape) the tower in
    PyTorch bf16 took 19.9 s against the clip's 19.2 s and twice the memory
    (benchmarks/bench_vision.py).

    Raises:
        InputError: an unknown choice, or torch asked for without PyTorch.
    """
    choice = (asked or "auto").lower()
    if choice not in VISION_PATHS:
        raise InputError(f"unknown vision path '{choice}'", "use --vision auto, llamacpp or torch")
    if choice == "torch":
        if not torch_installed():
            raise InputError("--vision torch needs PyTorch", "pip install 'medgem[hf]'")
        return "torch", "asked for"
    if choice == "llamacpp":
        return "llamacpp", "asked for"
    if not torch_installed():
        return "llamacpp", "llama.cpp's clip (PyTorch is not installed)"
    threads = threads or usable_cores()
    key = vision_key(threads)
    entry = _kept(key, path)
    if entry is None:
        return "llamacpp", ("llama.cpp's clip (the PyTorch tower is not measured here yet: "
                            "`medgem doctor --measure` measures both once)")
    return str(entry["choice"]), _vision_why(entry)


def kept_vision(threads: int, path: Path | None = None) -> dict[str, Any] | None:
    """The kept measurement of both vision paths for this CPU and thread count, or None."""
    return _kept(vision_key(threads), path)


def keep_vision(threads: int, times: dict[str, float], torch_dtype: str, path: Path | None = None) -> None:
    """Keep a measurement of both vision paths (``vision_measure.measure_vision_paths``) and
    the choice made from it, for :func:`choose_vision` to read from now on."""
    entry = {"choice": pick_vision(times), "times": {k: round(v, 4) for k, v in times.items()},
             "torch_dtype": torch_dtype}
    _keep(vision_key(threads), entry, path)


def pick_vision(times: dict[str, float]) -> str:
    """"torch" when its tower layer ran ``TORCH_MARGIN`` faster than the clip's, else "llamacpp".

    Args:
        times: {"llamacpp": s, "torch": s} from ``vision_measure.measure_vision_paths``.
    """
    return "torch" if times["torch"] * TORCH_MARGIN <= times["llamacpp"] else "llamacpp"


def _vision_why(entry: dict[str, Any]) -> str:
    times = entry["times"]
    where = "PyTorch's tower" if entry["choice"] == "torch" else "llama.cpp's clip"
    return (f"{where}: measured here once, one tower layer at 896 px: clip (f16) "
            f"{times['llamacpp']:.2f} s, PyTorch ({entry.get('torch_dtype', '?')}) {times['torch']:.2f} s")


def vision_key(threads: int) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        llama = version("llama-cpp-python")
    except PackageNotFoundError:
        llama = "-"
    return f"vision|1152x4304x16|{threads}t|torch {torch.__version__}|llama.cpp {llama}|{cpu_kind()}"


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def kernel_store_path() -> Path:
    return cache_dir() / "kernels.json"


def cpu_kind() -> str:
    """The CPU as far as kernel speed goes: its name and the matrix/vector units it has."""
    flags = cpu_flags()
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{cpu_name()} [{' '.join(units) or 'no avx2'}]"


def attention_key(tokens: int, heads: int, head_dim: int, dtype: str, threads: int) -> str:
    import torch

    return (f"attention|{tokens}x{heads}x{head_dim}|{dtype}|{threads}t|torch {torch.__version__}"
            f"|{cpu_kind()}")


def choose_attention(tokens: int, heads: int, head_dim: int, dtype: str, threads: int,
                     path: Path | None = None) -> tuple[str, dict[str, float]]:
    """The fastest attention for a vision tower of this shape on this CPU: (name, seconds per
    candidate), measured once (~0.1-2 s: see ``engines.attention.measure_attention``) and kept
    in ``kernels.json`` beside the speeds, per CPU kind, torch version, dtype and threads.

    An unwritable cache only costs the measurement again in the next process.
    """
    from medgem.engines.attention import measure_attention

    key = attention_key(tokens, heads, head_dim, dtype, threads)
    entry = _kept(key, path)
    if entry is None:
        times = measure_attention(tokens, heads, head_dim, dtype)
        entry = {"choice": min(times, key=times.__getitem__),
                 "times": {k: round(v, 6) for k, v in times.items()}}
        _keep(key, entry, path)
    return str(entry["choice"]), {k: float(v) for k, v in entry["times"].items()}


# int8 must beat the fastest float precision by this factor to be picked: it costs agreement
# (per soft token cosine >= 0.99 against float32, see vision_torch), so a tie goes to float.
INT8_MARGIN = 1.15


def tower_dtype_key(threads: int) -> str:
    import torch

    return f"tower-dtype|1152x4304|{threads}t|torch {torch.__version__}|{cpu_kind()}"


def choose_tower_dtype(threads: int, path: Path | None = None) -> tuple[str, dict[str, float]]:
    """The PyTorch tower's precision on this CPU: (dtype, seconds per candidate) at the tower's
    MLP-up shape (``engines.int8.measure_linear``, ~0.5 s), measured once and kept in
    ``kernels.json``. Candidates: float32; int8 where torch has fbgemm (x86); bfloat16 where
    the CPU has it natively (AVX512-BF16, AMX; emulated it ran at 0.6 GFLOP/s on an AVX2 Zen 1, so timing it
    there would cost ~15 s to learn what the flags already say).
    """
    from medgem.engines.int8 import int8_available, measure_linear

    key = tower_dtype_key(threads)
    entry = _kept(key, path)
    if entry is None:
        candidates = ("float32", *(["bfloat16"] if cpu_has_native_bf16() else []),
                      *(["int8"] if int8_available() else []))
        times = measure_linear(candidates)
        entry = {"choice": pick_tower_dtype(times), "times": {k: round(v, 6) for k, v in times.items()}}
        _keep(key, entry, path)
    return str(entry["choice"]), {k: float(v) for k, v in entry["times"].items()}


def pick_tower_dtype(times: dict[str, float]) -> str:
    """The fastest float precision, or int8 where it ran ``INT8_MARGIN`` faster than that."""
    floats = {name: seconds for name, seconds in times.items() if name != "int8"}
    best = min(floats, key=floats.__getitem__)
    if "int8" in times and times["int8"] * INT8_MARGIN <= floats[best]:
        return "int8"
    return best


def _kept(key: str, path: Path | None) -> dict[str, Any] | None:
    """A kept measurement with a choice among its timed candidates, or None."""
    with store_lock:
        entry = read_store(path or kernel_store_path()).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("times"), dict) and entry.get("choice") in entry["times"]:
        return entry
    return None


def _keep(key: str, entry: dict[str, Any], path: Path | None) -> None:
    """Add one measurement to ``kernels.json`` (best effort, as the speeds)."""
    path = path or kernel_store_path()
    with store_lock:
        data = read_store(path)
        data[key] = {**entry, "date": date.today().isoformat()}
        write_store(path, data)
