"""medgem's native AVX512-BF16 flash attention (engines/native): built with this machine's gcc,
proven in a child process before this process loads it, and measured against PyTorch's SDPA.

The kernel's own tests run where the CPU has AVX512-BF16 (skipped elsewhere, with the reason);
the child-process guard and the fallback run on every CPU.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medgem.engines import native  # noqa: E402
from medgem.engines.attention import BF16_ATTENTION_OK, measure_attention, run_attention, sdpa  # noqa: E402
from medgem.engines.native import FLASH, flash_attention, flash_available, flash_status  # noqa: E402
from medgem.hardware import cpu_flags  # noqa: E402

has_bf16 = "avx512_bf16" in cpu_flags()
needs_kernel = pytest.mark.skipif(not has_bf16, reason="this CPU has no AVX512-BF16: the kernel never loads here")


def exact_and_bf16(heads: int, n_queries: int, n_keys: int, head_dim: int, seed: int) -> tuple[Any, list[Any]]:
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn((1, heads, n, head_dim), generator=generator) * 2
               for n in (n_queries, n_keys, n_keys))
    return (q, k, v), [t.to(torch.bfloat16) for t in (q, k, v)]


def relative(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_the_kernel_loads_exactly_where_the_cpu_has_avx512_bf16() -> None:
    if has_bf16:
        assert flash_status() == "ok" and flash_available()
        assert native.library_path().exists()
        assert native.library_path().with_suffix(".verdict").read_text() == "ok"  # the child's pass
    else:
        assert flash_status() == "this CPU has no AVX512-BF16" and not flash_available()


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 7, 300, 9), (3, 61, 257, 72), (1, 130, 64, 16), (4, 256, 1024, 72)])
def test_flash_is_as_close_to_float32_attention_as_sdpa_bf16(shape: tuple[int, int, int, int]) -> None:
    """Short last blocks of query rows and keys, an odd head_dim, the tower's own head_dim: the
    stated bound is 1.1x PyTorch's bf16 SDPA's own error against float32 attention (measured
    0.95-0.97x: the same fp32 scores, one rounding of the probabilities)."""
    (q, k, v), half = exact_and_bf16(*shape, seed=sum(shape))
    scale = shape[3] ** -0.5
    exact = sdpa(q, k, v, scale)
    ours = flash_attention(*half, scale)
    assert ours.shape == exact.shape and ours.dtype == torch.bfloat16
    sdpa_error = relative(sdpa(*half, scale), exact)
    assert relative(ours, exact) < 1.1 * sdpa_error + 1e-4, (relative(ours, exact), sdpa_error)
    # float32 in gives float32 out (the int8 tower's attention): the same arithmetic
    assert flash_attention(q, k, v, scale).dtype == torch.float32
    assert relative(flash_attention(q, k, v, scale), ours) < 1e-2


@needs_kernel
def test_peaked_scores_across_key_blocks_stay_as_close_as_sdpa_bf16() -> None:
    """Logits with a spread of ~30 (most rows dominated by a few keys, whose block differs per
    row) stress the running maximum and the rescaling between key blocks (700 keys: three)."""
    (q, k, v), half = exact_and_bf16(2, 300, 700, 16, seed=5)
    q, half[0] = q * 8, (q * 8).to(torch.bfloat16)
    exact = sdpa(q, k, v, 1.0)
    sdpa_error = relative(sdpa(*half, 1.0), exact)
    assert relative(flash_attention(*half, 1.0), exact) < 1.1 * sdpa_error + 1e-4


@needs_kernel
def test_run_attention_dispatches_the_native_kernel_and_its_choice_is_measured() -> None:
    _, half = exact_and_bf16(2, 40, 40, 8, seed=3)
    assert torch.equal(run_attention(FLASH, *half, 8 ** -0.5), flash_attention(*half, 8 ** -0.5))
    for dtype in BF16_ATTENTION_OK:
        assert FLASH in measure_attention(40, 2, 8, dtype, repeats=1)
    # a float32 tower keeps float32 attention: the native bf16 kernel is never its candidate
    assert FLASH not in measure_attention(40, 2, 8, "float32", repeats=1)


@needs_kernel
def test_bf16_and_int8_towers_with_flash_match_their_sdpa_towers(converted_vlm: Path) -> None:
    """The tiny real tower + projector: image embeddings with the native attention within 1.5x
    of the SDPA-bf16 tower's distance from the float32 tower (plus 1e-3 relative); the int8
    tower with it within 1e-2 of the int8 tower with float32 SDPA."""
    pytest.importorskip("llama_cpp")
    from PIL import Image

    from medgem.engines.llamacpp.vision_torch import TorchTower

    mmproj = converted_vlm / "mmproj.gguf"
    picture = Image.fromarray(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    exact = TorchTower(mmproj, dtype="float32", attention="sdpa").embed(picture)
    sdpa_bf16 = TorchTower(mmproj, dtype="bfloat16", attention="sdpa").embed(picture)
    flash_bf16 = TorchTower(mmproj, dtype="bfloat16", attention=FLASH).embed(picture)
    distance = np.linalg.norm(sdpa_bf16 - exact) / np.linalg.norm(exact)
    assert np.linalg.norm(flash_bf16 - exact) / np.linalg.norm(exact) < 1.5 * distance + 1e-3
    int8_sdpa = TorchTower(mmproj, dtype="int8", attention="sdpa").embed(picture)
    int8_flash = TorchTower(mmproj, dtype="int8", attention=FLASH).embed(picture)
    assert np.linalg.norm(int8_flash - int8_sdpa) / np.linalg.norm(int8_sdpa) < 1e-2


# --- the guard: nothing native runs in this process before a child has run it -------------------

def fake_library(tmp_path: Path, body: str) -> Path:
    """A library with the kernel's signature whose body is ``body`` (C)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine")
    source = tmp_path / "fake.c"
    source.write_text("#include <stdint.h>\nint medgem_flash_bf16(const uint16_t *q, const uint16_t *k, "
                      "const uint16_t *v, float *out, int heads, int nq, int nk, int d, float scale, "
                      f"int threads) {{ {body} }}\n")
    library = tmp_path / "fake.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def test_a_kernel_that_kills_its_process_is_caught_in_the_child(tmp_path: Path) -> None:
    """An illegal instruction (what a CPU without the kernel's instructions raises) kills only
    the child: the parent gets one line naming the signal."""
    library = fake_library(tmp_path, "__builtin_trap(); return 0;")
    problem = native._prove(library)
    assert problem is not None and "killed by signal" in problem


def test_a_kernel_that_answers_wrong_is_refused_by_the_child(tmp_path: Path) -> None:
    library = fake_library(tmp_path, "for (long i = 0; i < (long)heads * nq * d; i++) out[i] = 0.0f; return 0;")
    problem = native._prove(library)
    assert problem is not None and problem.startswith("its check failed: shape") and "error" in problem


@needs_kernel
def test_a_kept_failed_verdict_keeps_pytorch_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's verdict is kept beside the library: a failure recorded once is not retried in
    every process, the kernel is never loaded, and the measurement leaves it out."""
    monkeypatch.setenv("MEDGEM_CACHE", str(tmp_path))
    native._load.cache_clear()
    try:
        library = native.library_path()
        library.parent.mkdir(parents=True)
        library.write_bytes(b"")  # present: no build
        library.with_suffix(".verdict").write_text("its check was killed by signal 4 on this CPU")
        assert flash_status() == "its check was killed by signal 4 on this CPU"
        assert not flash_available()
        assert FLASH not in measure_attention(40, 2, 8, "bfloat16", repeats=1)
        with pytest.raises(RuntimeError, match="not available here: its check was killed"):
            flash_attention(*exact_and_bf16(1, 4, 4, 8, seed=0)[1], 1.0)
    finally:
        native._load.cache_clear()


def test_doctor_says_whether_the_kernel_runs_here() -> None:
    import json

    from conftest import run_cli

    pytest.importorskip("llama_cpp")
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["llamacpp"]["native_attention"] == flash_status()
    text = run_cli("doctor").stdout
    assert ("flash-bf16 kernel runs here" in text) == has_bf16, text
