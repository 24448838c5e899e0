"""Keep a model loaded between commands: `ask`, `describe` and `chat` send the question to a running
`medgem serve` of the same checkpoint writing to the same audit store (a real server process on
127.0.0.1) instead of loading it; `medgem ps` lists servers and `medgem stop` ends them; a state
file never outlives its server's way out, and a stale one is never trusted."""

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
           "MEDGEM_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "MEDGEM_AUDIT_DB": str(tmp_path / "server-audit.sqlite")}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--port",
         str(port)],
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
    store = tmp_path / "server-audit.sqlite"
    line = (f"medgem: using your running server at http://127.0.0.1:{port} (pid {server.pid}, "
            f"audit {store}); --no-server loads the model here")
    assert line in asked.stderr.splitlines()
    assert "· remote ·" in asked.stderr  # the answer came over HTTP, nothing loaded here
    assert _answers(store) == 1  # the server's record only: the client wrote none beside it

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
    assert _answers(store) == 4  # ask, describe and two chat turns: one record each

    local = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint), "--no-server",
                    "--max-new-tokens", "3", env=env)
    assert local.returncode == 0, local.stderr
    assert "using your running server" not in local.stderr and "· hf ·" in local.stderr

    other = run_cli("ask", "What is sepsis?", "--model", str(tiny_text_checkpoint),
                    "--max-new-tokens", "3", env=env)
    assert other.returncode == 0, other.stderr
    assert "using your running server" not in other.stderr  # another model: loaded here

    elsewhere = tmp_path / "my-own-audit.sqlite"  # another store: this server may not answer
    own = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint),
                  "--max-new-tokens", "3", "--audit-db", str(elsewhere), env=env)
    assert own.returncode == 0, own.stderr
    assert "using your running server" not in own.stderr and "· hf ·" in own.stderr
    assert _answers(elsewhere) == 1

    explicit = run_cli("ask", "What is sepsis?", "--server", f"http://127.0.0.1:{port}",
                       "--max-new-tokens", "3", "--audit-db", str(elsewhere), env=env)
    assert explicit.returncode == 0, explicit.stderr
    assert (f"medgem: using the server at http://127.0.0.1:{port} (it writes the audit record)"
            in explicit.stderr.splitlines() and "· remote ·" in explicit.stderr)
    assert _answers(elsewhere) == 1 and _answers(store) == 7  # 4 + --no-server + other + this

    server.send_signal(signal.SIGINT)  # a server that stops cleanly takes its state file along
    server.wait(60)
    assert not state.exists()


def _answers(store: Path) -> int:
    from medgem.audit import open_store

    opened = open_store(store)
    try:
        return opened.count("answer")
    finally:
        opened.close()


def test_ps_lists_the_server_and_stop_ends_it_gracefully(
    served: tuple[subprocess.Popen[str], int, dict[str, str]], tmp_path: Path,
) -> None:
    server, port, env = served
    listed = run_cli("ps", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["model"], row["port"], row["pid"], row["status"]) == ("medgem-test-vlm", port, server.pid, "ok")
    assert row["audit"] == str(tmp_path / "server-audit.sqlite")
    assert row["requests"] == 0 and row["uptime_s"] >= 0
    table = run_cli("ps", env=env)
    assert "MODEL" in table.stdout and f"{port}" in table.stdout and "medgem-test-vlm" in table.stdout

    busy = run_cli("serve", "--model", "/no/such/model", "--port", str(port), env=env)
    assert busy.returncode == 1
    assert (f"port {port} is already in use by your medgem server of medgem-test-vlm (pid "
            f"{server.pid})") in busy.stderr and f"medgem stop {port}" in busy.stderr

    wrong = run_cli("stop", str(port + 1), env=env)
    assert wrong.returncode == 1 and f"no medgem server of yours is on port {port + 1}" in wrong.stderr
    stopped = run_cli("stop", str(port), env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"medgem: stopped medgem-test-vlm on port {port} (pid {server.pid})" in stopped.stderr
    assert server.wait(60) == 0  # SIGTERM: a clean exit, after the drain
    assert not (tmp_path / "mc" / "servers" / f"{server.pid}.json").exists()
    assert json.loads(run_cli("ps", "--json", env=env).stdout) == []


def test_sigterm_during_the_load_and_an_error_at_start_leave_no_state_file(
    tmp_path: Path, tiny_vlm_checkpoint: Path,
) -> None:
    env = {"MEDGEM_CACHE": str(tmp_path / "mc"), "MEDGEM_CONFIG": "",
           "MEDGEM_API_KEYS": str(tmp_path / "no-keys.json")}
    port = _free_port()
    early = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_vlm_checkpoint), "--port",
         str(port)], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _listening(port):  # the port is held before the load starts
        assert early.poll() is None and time.monotonic() < deadline, early.communicate()[1]
        time.sleep(0.05)
    early.send_signal(signal.SIGTERM)
    assert early.wait(60) == 0, early.communicate()[1]
    # off loopback without keys: refused at start-up, once the model is loaded
    refused = run_cli("serve", "--model", str(tiny_vlm_checkpoint), "--host", "0.0.0.0",
                      "--port", str(port), env=env)
    assert refused.returncode == 1 and "needs API keys" in refused.stderr
    servers = tmp_path / "mc" / "servers"
    assert not servers.exists() or list(servers.glob("*.json")) == []


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_a_state_file_whose_port_does_not_answer_is_never_trusted(tmp_path: Path,
                                                                 tiny_vlm_checkpoint: Path) -> None:
    """A live process (this test) with a port nobody listens on: stale, removed, not used."""
    env = {"MEDGEM_CACHE": str(tmp_path / "mc")}
    servers = tmp_path / "mc" / "servers"
    servers.mkdir(parents=True)
    stale = servers / f"{os.getpid()}.json"
    stale.write_text(json.dumps({
        "pid": os.getpid(), "uid": os.getuid(), "host": "127.0.0.1", "port": _free_port(),
        "served_name": "medgem-test-vlm", "model": {"path": str(tiny_vlm_checkpoint.resolve()),
                                                    "revision": None, "adapter": None},
        "engine": "hf", "audit": os.environ["MEDGEM_AUDIT_DB"], "started": time.time()}))
    listed = run_cli("ps", "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert not stale.exists()


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
    assert "using your running server" not in result.stderr and "· hf ·" in result.stderr
    assert not state.exists()


@pytest.fixture()
def answering_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose /healthz says 200, as a live server's does: what took the dead
    server's port, so that only the pid check is left to tell the state file is stale."""
    import http.server
    import threading

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    yield int(listener.server_address[1])
    listener.shutdown()
    listener.server_close()


def test_a_state_file_whose_pid_is_now_another_program_is_never_trusted(
    tmp_path: Path, tiny_vlm_checkpoint: Path, answering_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server died without its clean exit, its pid went to an unrelated program (a `sleep`)
    and its port answers: ps, ask's routing and stop all leave it alone, and stop kills nothing."""
    from medgem.cli.running import (
        find_server,
        identity,
        process_mark,
        running_servers,
        store_location,
    )

    env = {"MEDGEM_CACHE": str(tmp_path / "mc"), "MEDGEM_CONFIG": "",
           "MEDGEM_API_KEYS": str(tmp_path / "no-keys.json")}
    monkeypatch.setenv("MEDGEM_CACHE", env["MEDGEM_CACHE"])
    servers = tmp_path / "mc" / "servers"
    servers.mkdir(parents=True)
    model = identity(tiny_vlm_checkpoint, None, None)
    other = subprocess.Popen(["sleep", "300"])
    try:
        def state(mark: str | None) -> Path:
            path = servers / f"{other.pid}.json"
            path.write_text(json.dumps({
                "pid": other.pid, "uid": os.getuid(), "host": "127.0.0.1", "port": answering_port,
                "served_name": "medgem-test-vlm", "model_id": "medgem-test-vlm", "model": model,
                "engine": "hf", "keys_required": False, "variant": None,
                "audit": store_location(None), "started": time.time(), "process": mark}))
            return path

        # The same file with the sleep's own start would be trusted (all else in it holds) ...
        state(process_mark(other.pid))
        assert [s.pid for s, _ in running_servers()] == [other.pid]
        assert find_server(model, engine="hf", audit=store_location(None)) is not None
        # ... but the server it recorded started at another moment (here: this test's start).
        dead_server = process_mark(os.getpid())
        assert dead_server and dead_server != process_mark(other.pid)
        stale = state(dead_server)
        assert find_server(model, engine="hf", audit=store_location(None)) is None
        assert not stale.exists()
        stale = state(dead_server)
        listed = run_cli("ps", "--json", env=env)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
        assert not stale.exists()

        stale = state(dead_server)
        asked = run_cli("ask", "What is sepsis?", "--model", str(tiny_vlm_checkpoint),
                        "--max-new-tokens", "3", env=env)
        assert asked.returncode == 0, asked.stderr
        assert "using your running server" not in asked.stderr and "· hf ·" in asked.stderr
        assert not stale.exists()

        for which in ([], ["all"], [str(answering_port)]):
            stale = state(dead_server)
            stopped = run_cli("stop", *which, env=env)
            assert stopped.returncode == (1 if which == [str(answering_port)] else 0), stopped.stderr
            assert "no medgem server of yours" in stopped.stderr
            assert not stale.exists()
        unmarked = state(None)  # a file that names no start (an older medgem's): not trusted either
        assert running_servers() == [] and not unmarked.exists()
        assert other.poll() is None  # nothing signalled the unrelated program
    finally:
        other.kill()
        other.wait(10)
