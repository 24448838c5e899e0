"""`medgem pull` and `medgem rm` against a real local HTTP server that speaks the hub's download
endpoints (HF_ENDPOINT points at it): nothing reaches the internet. Each command runs in a
subprocess, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from fake_hub import FakeHub, FakeRepo

CHUNK = 10 * 1024 * 1024  # huggingface_hub writes a download in 10 MiB chunks


def _env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_TOKEN": "", "HF_HUB_DISABLE_TELEMETRY": "1", "MEDGEM_CACHE": str(tmp_path / "mc"),
            "MEDGEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "MEDGEM_MODEL_DIRS": ""}


@pytest.fixture()
def tiny_repo(tmp_path: Path, tiny_text_checkpoint: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    for path in tiny_text_checkpoint.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    assert (folder / "model.safetensors").stat().st_size > CHUNK + 4096
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_resumes_after_an_interrupt_and_rm_deletes_it(tiny_repo: Path, tmp_path: Path) -> None:
    with FakeHub({"test-org/tiny-text": FakeRepo(tiny_repo)}) as hub:
        env = {**os.environ, **_env(hub, tmp_path)}
        hub.stall_after["model.safetensors"] = CHUNK + 1024
        process = subprocess.Popen([sys.executable, "-m", "medgem", "pull", "test-org/tiny-text"],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        blobs = tmp_path / "hub" / "models--test-org--tiny-text" / "blobs"
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size >= CHUNK for p in blobs.glob("*.incomplete")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)  # Ctrl-C in the middle of model.safetensors
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "`medgem pull test-org/tiny-text` resumes it" in stderr

        again = run_cli("pull", "test-org/tiny-text", env=_env(hub, tmp_path))
        assert again.returncode == 0, again.stderr
        weights = [e for e in hub.file_requests() if e[0] == "GET" and e[1].endswith("model.safetensors")]
        assert [e[2] for e in weights] == [None, f"bytes={CHUNK}-"]  # the second asked for the rest
        snapshot = Path(again.stdout.split("pulled test-org/tiny-text into ")[1].split("\n")[0])
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert _sha(snapshot / name) == _sha(tiny_repo / name)

        listed = {r["name"]: r for r in json.loads(run_cli("models", "--json", env=_env(hub, tmp_path)).stdout)}
        assert listed["test-org/tiny-text"]["source"] == "pulled"
        assert listed["test-org/tiny-text"]["format"] == "safetensors f32"

        kept = run_cli("rm", "test-org/tiny-text", stdin="n\n", env=_env(hub, tmp_path))
        assert kept.returncode == 1 and "nothing deleted" in kept.stderr
        assert snapshot.is_dir()
        removed = run_cli("rm", "test-org/tiny-text", "--yes", env=_env(hub, tmp_path))
        assert removed.returncode == 0, removed.stderr
        assert not (tmp_path / "hub" / "models--test-org--tiny-text").exists()


def test_a_model_too_big_for_this_machine_is_refused_before_any_byte(tiny_repo: Path,
                                                                     tmp_path: Path) -> None:
    with FakeHub({"test-org/huge": FakeRepo(tiny_repo, parameters=10**13)}) as hub:
        result = run_cli("pull", "test-org/huge", env=_env(hub, tmp_path))
        assert result.returncode == 1
        assert "test-org/huge will not run on this machine, so nothing was downloaded" in result.stderr
        assert hub.file_requests() == []
        assert not (tmp_path / "hub" / "models--test-org--huge" / "blobs").exists()


def test_a_model_too_big_for_the_disk_is_refused_before_any_byte(tiny_repo: Path,
                                                                tmp_path: Path) -> None:
    claimed = FakeRepo(tiny_repo, parameters=1000, sizes={"model.safetensors": 10**16})
    with FakeHub({"test-org/wide": claimed}) as hub:
        result = run_cli("pull", "test-org/wide", env=_env(hub, tmp_path))
        assert result.returncode == 1
        assert "needs 10000000.0 GB of disk" in result.stderr and "nothing was downloaded" in result.stderr
        assert hub.file_requests() == []


def test_27b_on_a_16_gb_laptop_is_refused_and_4b_gets_a_note() -> None:
    """The decision itself, on a described machine (this one's RAM varies)."""
    from medgem.cli.pull import PullPlan, check_room
    from medgem.errors import ResourceError
    from medgem.hardware import GIB, Hardware

    laptop = Hardware(cpu="x86-64", cores=4, cpu_bf16=False, ram_total=16 * GIB,
                      ram_available=12 * GIB)
    with pytest.raises(ResourceError, match="google/medgemma-27b-it will not run on this machine"):
        check_room(PullPlan("google/medgemma-27b-it", "main", {"model.safetensors": 1}, int(27.4e9)),
                   laptop)
    small = Hardware(cpu="x86-64", cores=4, cpu_bf16=False, ram_total=8 * GIB, ram_available=6 * GIB)
    note = check_room(PullPlan("google/medgemma-4b-it", "main", {"config.json": 1}, int(4.3e9)), small)
    assert note is not None and "medgem convert google/medgemma-4b-it" in note


def test_rm_deletes_a_converted_gguf_and_refuses_what_medgem_did_not_make(
    tmp_path: Path, tiny_vlm_checkpoint: Path, tiny_text_checkpoint: Path,
) -> None:
    env = {"MEDGEM_CACHE": str(tmp_path / "mc"), "MEDGEM_CONFIG": "",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "MEDGEM_MODEL_DIRS": str(tiny_text_checkpoint.parent)}
    real_cache = Path(os.environ.get("MEDGEM_CACHE") or Path.home() / ".cache" / "medgem")
    (tmp_path / "mc").mkdir()
    for shared in ("gguf", "gemma3-tokenizer-v2"):
        if (real_cache / shared).exists():
            (tmp_path / "mc" / shared).symlink_to(real_cache / shared)
    out = tmp_path / "vlm-q"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a file convert did not write stays
    converted = run_cli("convert", str(tiny_vlm_checkpoint), "--quant", "f16", "--out", str(out),
                        "--no-check", env=env)
    assert converted.returncode == 0, converted.stderr

    path = run_cli("rm", str(out / "model.gguf"), "--yes", env=env)
    assert path.returncode == 1 and "a path medgem did not create" in path.stderr
    local = run_cli("rm", "tiny-text", "--yes", env=env)
    assert local.returncode == 1 and "which medgem did not create" in local.stderr
    assert (tiny_text_checkpoint / "config.json").is_file()

    removed = run_cli("rm", "vlm-q", "--yes", env=env)
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    names = {r["name"] for r in json.loads(run_cli("models", "--json", env=env).stdout)}
    assert "vlm-q" not in names
