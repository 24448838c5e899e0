"""llama.cpp as native code: the portable build, the extra-buffer policy and the child probe.

Every llama.cpp kernel here runs in a child process; pytest's own process only reads results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from medgem.config import load_settings
from medgem.engines.llamacpp.native import cpu_features, describe_cpu_features, use_extra_buffers
from medgem.engines.llamacpp.probe import _read_child
from medgem.hardware import cpu_flags

SAPPHIRE_RAPIDS = {"avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                   "amx_int8", "amx_bf16"}
ZEN3 = {"avx2", "fma", "f16c"}


def test_llama_cpp_runs_on_this_cpu(llamacpp_probe: Any) -> None:
    """The one test that fails, with the signal and the CPU features, when llama.cpp crashes
    here; every in-process llama.cpp test is skipped then instead of killing the run."""
    assert llamacpp_probe.ok, llamacpp_probe.message()
    assert llamacpp_probe.kernels, "the CPU backend reported no features"
    assert llamacpp_probe.extra_buffers == use_extra_buffers()


def test_extra_buffers_are_off_exactly_on_amx_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDGEM_LLAMA_REPACK", raising=False)
    assert use_extra_buffers(SAPPHIRE_RAPIDS) is False
    assert use_extra_buffers(ZEN3) is True
    assert use_extra_buffers(ZEN3 | {"avx512f", "avx512_bf16"}) is True
    monkeypatch.setenv("MEDGEM_LLAMA_REPACK", "on")
    assert use_extra_buffers(SAPPHIRE_RAPIDS, load_settings().engine_fields("llamacpp").get("repack")) is True
    monkeypatch.setenv("MEDGEM_LLAMA_REPACK", "off")
    assert use_extra_buffers(ZEN3, load_settings().engine_fields("llamacpp").get("repack")) is False


def test_cpu_features_are_named_as_users_know_them() -> None:
    assert describe_cpu_features(SAPPHIRE_RAPIDS) == (
        "AVX2 ✓ AVX512 ✓ AVX512-VNNI ✓ AVX512-BF16 ✓ AMX ✓")
    assert describe_cpu_features(ZEN3) == "AVX2 ✓ AVX512 ✗ AVX512-VNNI ✗ AVX512-BF16 ✗ AMX ✗"
    assert cpu_features(set())["AVX2"] is False


def test_a_child_killed_by_sigill_is_reported_with_the_signal_and_cpu() -> None:
    """A real process that dies of SIGILL, read the way the probe reads its child."""
    child = subprocess.run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"],
        capture_output=True, text=True, check=False)
    assert child.returncode == -signal.SIGILL
    result = _read_child(child.returncode, child.stdout, child.stderr, 0.1)
    assert not result.ok
    message = result.message()
    assert "SIGILL" in message and "instruction this CPU lacks" in message
    assert describe_cpu_features() in message


# --- the installed build ----------------------------------------------------------------------

llama_cpp_installed = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed")


@llama_cpp_installed
def test_the_installed_build_dispatches_at_run_time() -> None:
    """scripts/install.sh builds one CPU backend per x86-64 level, so the wheel is portable."""
    from medgem.engines.llamacpp.native import cpu_variants

    variants = cpu_variants()
    assert {"x64", "haswell", "skylakex", "zen4", "sapphirerapids"} <= set(variants), variants


def _probe_in_child(env: dict[str, str]) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-m", "medgem.engines.llamacpp.probe"],
                           capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, **env})
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


@llama_cpp_installed
@pytest.mark.skipif("avx2" not in cpu_flags(), reason="needs an AVX2 CPU")
def test_avx2_only_kernels_run_and_match_the_best_ones(llamacpp_runs: None) -> None:
    """What an AVX2-only CPU loads (the haswell backend), forced here, with and without
    repacking: same greedy tokens as the best backend for this CPU on the tiny model."""
    best = _probe_in_child({})
    avx2 = _probe_in_child({"MEDGEM_LLAMA_CPU_VARIANT": "haswell"})
    plain = _probe_in_child({"MEDGEM_LLAMA_CPU_VARIANT": "haswell", "MEDGEM_LLAMA_REPACK": "off"})
    assert avx2["kernels"].get("AVX2") == "1" and "AVX512" not in avx2["kernels"]
    assert plain["extra_buffers"] is False and avx2["extra_buffers"] == use_extra_buffers()
    # f16 weights: identical arithmetic up to summation order; the tiny model's top token is
    # far ahead of the second, so the greedy ids agree. Quantized runs need only run.
    assert avx2["runs"]["f16"] == best["runs"]["f16"] == plain["runs"]["f16"]
    for run in (best, avx2, plain):
        assert set(run["runs"]) == {"f16", "q8_0", "q4_k_m"}
        assert all(len(tokens) == 5 for tokens in run["runs"].values())
        assert run["image_tokens"] == 4  # the tiny projector pools 16 patches to 2x2


@llama_cpp_installed
def test_an_unknown_cpu_variant_is_one_clear_error(tmp_path: Path) -> None:
    """Forcing a backend the build lacks: one line naming the choices, exit 1, no crash."""
    from medgem.demo.build import demo_gguf_path

    result = run_cli("ask", "--model", str(demo_gguf_path()), "--max-new-tokens", "2", "Hi",
                     env={"MEDGEM_LLAMA_CPU_VARIANT": "pentium3", "MEDGEM_CACHE": str(tmp_path)})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "pentium3" in lines[0] and "haswell" in lines[0] and "Traceback" not in result.stderr


@llama_cpp_installed
def test_doctor_names_the_cpu_features_and_the_kernels(llamacpp_runs: None) -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu_features"]["AVX2"] == ("avx2" in cpu_flags())
    assert report["cpu_features"]["AMX"] == ("amx_tile" in cpu_flags())
    llama = report["llamacpp"]
    assert llama["runs_here"] is True and llama["build"].startswith("runtime CPU dispatch")
    assert llama["weight_repacking"] == use_extra_buffers()
    if "avx2" in cpu_flags():
        assert "AVX2" in llama["kernels"]
    text = run_cli("doctor")
    assert text.returncode == 0 and "kernels here:" in text.stdout
    assert describe_cpu_features() in text.stdout
