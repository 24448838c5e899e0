"""Speeds this machine has measured, kept so that a long job can be estimated before it runs.

The llama.cpp engine records, per model file and vision path, what each image question cost:
seconds in the vision tower per image, and the language model's prefill rate (tokens/s, from
single-sequence prefill batches, so other requests in a batch do not skew it). ``medgem
inspect --model M`` reads them to say how long a CT volume will take to its first token on this
machine. Figures come only from runs here (nothing is assumed from another CPU); the store is a
small JSON file in the medgem cache (``$MEDGEM_CACHE``), median of the last few runs per figure.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from medgem.config import cache_dir
from medgem.errors import InputError

KEEP = 5  # runs kept per figure; the median of them is reported
_lock = threading.Lock()


def store_path() -> Path:
    return cache_dir() / "speeds.json"


def speed_key(model: Path, mmproj: Path | None, vision: str, threads: int) -> str:
    """What a figure depends on: the files (name and size), where the tower runs, the CPU and
    how many threads it had."""
    def ident(path: Path | None) -> str:
        return f"{path.name}:{path.stat().st_size}" if path is not None and path.exists() else "-"

    from medgem.engines.llamacpp.probe import cpu_name

    return f"{ident(model)}|{ident(mmproj)}|{vision}|{threads}t|{cpu_name()}"


@dataclass(frozen=True)
class Speeds:
    """Median figures for one key; None where that figure was never measured."""

    vision_s_per_image: float | None
    prefill_tokens_per_s: float | None
    runs: int
    measured_on: str

    def first_token_s(self, images: int, tokens_per_image: int, text_tokens: int) -> float | None:
        """Seconds to the first token: every image through the tower, then every prompt token
        (the images' soft tokens included) through the language model's prefill."""
        if self.prefill_tokens_per_s is None or (images and self.vision_s_per_image is None):
            return None
        prefill = (images * tokens_per_image + text_tokens) / self.prefill_tokens_per_s
        return images * (self.vision_s_per_image or 0.0) + prefill


def record(key: str, vision_s_per_image: float | None = None,
           prefill_tokens_per_s: float | None = None, path: Path | None = None) -> None:
    """Add one run's figures (best effort: an unwritable cache never fails a request)."""
    path = path or store_path()
    with _lock:
        data = _read(path)
        entry = data.setdefault(key, {"vision": [], "prefill": []})
        for name, value in (("vision", vision_s_per_image), ("prefill", prefill_tokens_per_s)):
            if value is not None and value > 0:
                entry[name] = ([*entry.get(name, []), round(value, 4)])[-KEEP:]
        entry["date"] = date.today().isoformat()
        _write(path, data)


def lookup(key: str, path: Path | None = None) -> Speeds | None:
    """The figures measured for ``key`` on this machine, or None."""
    entry = _read(path or store_path()).get(key)
    if not entry:
        return None
    vision, prefill = entry.get("vision", []), entry.get("prefill", [])
    return Speeds(statistics.median(vision) if vision else None,
                  statistics.median(prefill) if prefill else None,
                  max(len(vision), len(prefill)), str(entry.get("date", "")))


def _write(path: Path, data: dict[str, dict]) -> None:  # type: ignore[type-arg]
    """Replace the store atomically; an unwritable cache is skipped (best effort)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(out.name, path)
    except OSError:
        pass


def measured_keys(path: Path | None = None) -> list[str]:
    """Every key with figures in the store."""
    return sorted(_read(path or store_path()))


def _read(path: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


VISION_PATHS = ("auto", "llamacpp", "torch")


def choose_vision(asked: str | None = None) -> tuple[str, str]:
    """(path, why): where this machine runs the vision tower.

    ``asked`` (the ``vision`` option) forces "llamacpp" or "torch". "auto" keeps
    llama.cpp's clip: measured on an AVX512-BF16 CPU (Zen 5, 2 cores, 4B shape), the tower in
    PyTorch bf16 took 19.9 s against the clip's 19.2 s and twice the resident memory
    (benchmarks/bench_vision.py). On CPUs without native bf16, PyTorch would run float32
    (31.6 s there). AMX CPUs are not measured yet: `--vision torch` is there to try.

    Raises:
        InputError: an unknown choice, or torch asked for without PyTorch.
    """
    from medgem.hardware import cpu_flags

    choice = (asked or "auto").lower()
    if choice not in VISION_PATHS:
        raise InputError(f"unknown vision path '{choice}'", "use --vision auto, llamacpp or torch")
    if choice == "torch":
        if not _torch_installed():
            raise InputError("--vision torch needs PyTorch", "pip install 'medgem[hf]'")
        return "torch", "asked for"
    if choice == "llamacpp":
        return "llamacpp", "asked for"
    if "amx_bf16" in cpu_flags():
        return "llamacpp", "llama.cpp's clip (AMX is not measured yet: try --vision torch)"
    return "llamacpp", "llama.cpp's clip: as fast as PyTorch bf16 where measured, half the memory"


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def estimate_first_token(model: Path, mmproj: Path | None, images: int, text_tokens: int = 64,
                         threads: int | None = None, vision: str | None = None,
                         path: Path | None = None) -> tuple[float | None, Speeds | None]:
    """Seconds to the first token for ``images`` images and ~``text_tokens`` of text with this
    GGUF on this machine, from the figures measured here: (None, None) when none were."""
    from medgem.engines.gguf.read import read_header

    threads = threads or max(1, len(os.sched_getaffinity(0)))
    where = choose_vision(vision)[0] if mmproj is not None else "none"
    measured = lookup(speed_key(model, mmproj, where, threads), path)
    if measured is None:
        return None, None
    tokens_per_image = 0
    if mmproj is not None:
        header = read_header(mmproj, "vision projector")
        side = int(header.get("clip.vision.image_size", 0)) // int(header.get("clip.vision.patch_size", 1))
        tokens_per_image = (side // int(header.get("clip.vision.projector.scale_factor", 1))) ** 2
    return measured.first_token_s(images, tokens_per_image, text_tokens), measured


# --- kernels chosen by measuring them here once ------------------------------------------------


def kernel_store_path() -> Path:
    return cache_dir() / "kernels.json"


def cpu_kind() -> str:
    """The CPU as far as kernel speed goes: its name and the matrix/vector units it has."""
    from medgem.engines.llamacpp.probe import cpu_name
    from medgem.hardware import cpu_flags

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

    path = path or kernel_store_path()
    key = attention_key(tokens, heads, head_dim, dtype, threads)
    with _lock:
        entry = _read(path).get(key)
    if entry and isinstance(entry.get("times"), dict) and entry.get("choice") in entry["times"]:
        return str(entry["choice"]), {k: float(v) for k, v in entry["times"].items()}
    times = measure_attention(tokens, heads, head_dim, dtype)
    choice = min(times, key=times.__getitem__)
    with _lock:
        data = _read(path)
        data[key] = {"choice": choice, "times": {k: round(v, 6) for k, v in times.items()},
                     "date": date.today().isoformat()}
        _write(path, data)
    return choice, times
