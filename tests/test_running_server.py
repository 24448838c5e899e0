"""Keep a model loaded between commands: `ask`, `describe` and `chat` send the question to a running
`medgem serve` of the same checkpoint (a real server process on 127.0.0.1) instead of loading it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, run_cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def served(tmp_path: Path, tiny_vlm_checkpoint: Path) -> Iterator[tuple[subprocess.Popen[str], int, dict[str, str]]]:
    env = {"MEDGEM_CACHE": str(tmp_path / "mc"), "MEDGEM_API_KEYS": str(tmp_path / "no-keys.json"),
           "MEDGEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--port",
         str(port), "--audit-db", str(tmp_path / "server-audit.sqlite")],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    yield server, port, env
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        server.wait(60)



def test_ask_and_describe_use_the_running_server_for_the_same_model(
    served: tuple[subprocess.Popen[str], int, dict[str, str]], tiny_vlm_checkpoint: Path,
    tiny_text_checkpoint: Path, tmp_path: Path,
) -> None:
    server, port, env = served
    state = tmp_path / "mc" / "servers" / f"{server.pid}.json"
    assert json.loads(state.read_text())["port"] == port

    asked = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint),
                    "--max-new-tokens", "3", env=env)
    assert asked.returncode == 0, asked.stderr
    line = f"medgem: using the running server at http://127.0.0.1:{port} (pid {server.pid})"
    assert line in asked.stderr.splitlines()
    assert "· remote ·" in asked.stderr  # the answer came over HTTP, nothing loaded here

    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "xray.png")
    described = run_cli("describe", str(tmp_path / "xray.png"), "--model", str(tiny_vlm_checkpoint),
                        "--max-new-tokens", "3", env=env)
    assert described.returncode == 0, described.stderr
    assert line in described.stderr.splitlines() and "· remote ·" in described.stderr

    chatted = run_cli("chat", "--model", str(tiny_vlm_checkpoint), "--max-new-tokens", "3",
                      stdin="What is sepsis?\nAnd its first treatment?\n/quit\n", env=env)
    assert chatted.returncode == 0, chatted.stderr
    assert line in chatted.stderr.splitlines() and "· remote ·" in chatted.stderr

    local = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint), "--no-server",
                    "--max-new-tokens", "3", env=env)
    assert local.returncode == 0, local.stderr
    assert "using the running server" not in local.stderr and "· hf ·" in local.stderr

    other = run_cli("ask", "What is sepsis?", "--model", str(tiny_text_checkpoint),
                    "--max-new-tokens", "3", env=env)
    assert other.returncode == 0, other.stderr
    assert "using the running server" not in other.stderr  # another model: loaded here

    server.send_signal(signal.SIGINT)  # a server that stops cleanly takes its state file along
    server.wait(60)
    assert not state.exists()


def test_a_dead_servers_state_file_is_ignored_and_removed(
    served: tuple[subprocess.Popen[str], int, dict[str, str]], tiny_vlm_checkpoint: Path,
    tmp_path: Path,
) -> None:
    server, _, env = served
    state = tmp_path / "mc" / "servers" / f"{server.pid}.json"
    server.kill()  # no clean shutdown: the state file stays behind
    server.wait(30)
    assert state.is_file()
    result = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint),
                     "--max-new-tokens", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert "using the running server" not in result.stderr and "· hf ·" in result.stderr
    assert not state.exists()
