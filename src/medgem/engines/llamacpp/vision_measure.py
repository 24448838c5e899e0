"""The one-time measurement behind ``kernels.choose_vision``: one layer of MedGemma's vision tower
at 896 px through llama.cpp's clip and through PyTorch (in the precision
``kernels.choose_tower_dtype`` picks), the choice kept in ``kernels.json``. It runs llama.cpp's
clip, so medgem takes it only where a crash costs one line: ``medgem doctor --measure`` runs it
in a child process after the probe showed llama.cpp works on this CPU. Apart from ``kernels``
because it needs the PyTorch tower, which reads its own choices from ``kernels``.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from medgem.engines.llamacpp import kernels
from medgem.hardware import best_seconds, usable_cores


def measure_vision(asked: str | None = None, threads: int | None = None,
                   path: Path | None = None) -> tuple[str, str]:
    """(path, why) as ``kernels.choose_vision`` gives it, measuring both paths first when "auto"
    has nothing kept here yet.

    Raises:
        InputError: as ``kernels.choose_vision``.
    """
    chosen = kernels.choose_vision(asked, threads, path)
    if chosen[1] == "asked for" or not kernels.torch_installed():
        return chosen
    threads = threads or usable_cores()
    if kernels.kept_vision(threads, path) is None:
        times, dtype = measure_vision_paths(threads)
        kernels.keep_vision(threads, times, dtype, path)
    return kernels.choose_vision(asked, threads, path)


def measure_vision_paths(threads: int) -> tuple[dict[str, float], str]:
    """Seconds per 896-px image of one layer of MedGemma's tower (SigLIP so400m: width
    1152, MLP 4304, 16 heads, 4,096 patches; random weights) through llama.cpp's clip and
    through PyTorch, each the best of two runs after a warm-up one. One layer is 1/27 of the
    tower's work (0.2 TFLOP: ~3 s at 67 GFLOP/s); every layer costs the same, so the ranking
    holds. The whole measurement, with the tower's attention and precision measured on the way,
    took 49-69 s on a busy 2-core Zen 1 (once per CPU kind, threads and versions).

    Returns:
        ({"llamacpp": s, "torch": s}, the PyTorch tower's dtype as ``choose_tower_dtype`` picked it).
    """
    from medgem.engines.gguf.write import write_random_mmproj
    from medgem.engines.llamacpp.probe import write_tiny_gguf
    from medgem.engines.llamacpp.vision_torch import TorchTower

    with tempfile.TemporaryDirectory(prefix="medgem-vision-") as folder:
        text = write_tiny_gguf(Path(folder) / "text.gguf")  # what libmtmd needs beside it
        mmproj = write_random_mmproj(Path(folder) / "mmproj.gguf", text_hidden=256)
        clip = clip_seconds(text, mmproj, threads)
        tower = TorchTower(mmproj, threads=threads)
        # the warm-up call is where oneDNN builds its kernels
        embed = functools.partial(tower.embed, _noise_image(tower.image_size, 1))
        return {"llamacpp": clip, "torch": best_seconds(embed, 2)}, tower.dtype


def _noise_image(size: int, seed: int) -> Any:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def clip_seconds(text_model: Path, mmproj: Path, threads: int) -> float:
    """Seconds for one image through libmtmd's clip as the engine runs it (flash attention):
    the best of two encodes after a warm-up one (a busy machine only ever slows a run)."""
    from medgem.engines.llamacpp.native import import_llama_cpp
    from medgem.engines.llamacpp.probe import one_image

    llama_cpp, mtmd = import_llama_cpp()
    size = _read_size(mmproj)
    with one_image(llama_cpp, mtmd, text_model, mmproj, size, threads) as (context, chunk):

        def encode() -> None:  # the warm-up call allocates the compute buffers
            if mtmd.mtmd_encode_chunk(context, chunk) != 0:
                raise RuntimeError("libmtmd could not encode the measurement's image")

        return best_seconds(encode, 2)


def _read_size(mmproj: Path) -> int:
    from medgem.engines.gguf.read import read_header

    return int(read_header(mmproj, "vision projector").get("clip.vision.image_size"))
