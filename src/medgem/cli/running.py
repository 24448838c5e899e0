"""Running `medgem serve` processes: seen by `medgem ps`, ended by `medgem stop`, and reused by
`ask`, `describe` and `chat` so a loaded model answers the next command (as Ollama does).

``serve`` holds its port from before the model loads and writes a small state file (pid, user,
address, served name, the checkpoint's identity, the audit store) into ``<medgem cache>/servers/``
once it is loaded; it removes the file on every way out (a normal end, SIGTERM or SIGINT, an
error at start-up). A state file is never trusted on its word: one whose process is gone, whose
pid now belongs to another program (the file records the process's start, see
:func:`process_mark`, and a pid is reused once its process has ended), or whose port does not
answer, is stale and removed; one another user wrote is ignored. `medgem stop` signals only the
process the file recorded (:func:`signal_server`). A command
reuses a server only when it is the same user's and writes to the same audit store, so each
question leaves exactly one record where the user expects it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.errors import InputError

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


@dataclass(frozen=True)
class RunningServer:
    """One live server, as its state file and its answers describe it."""

    pid: int
    url: str  # the API root, without /v1
    served_name: str
    keys_required: bool
    variant: str | None
    port: int = 0
    model_id: str = ""
    audit: str = ""
    started: float = 0.0
    engine: str = ""
    path: Path | None = None  # the state file
    mark: str = ""  # the process's start, as process_mark() says it


def state_dir() -> Path:
    return cache_dir() / "servers"


def identity(path: Path | str, revision: str | None, adapter: str | None) -> dict[str, str | None]:
    """What makes two loads the same model: the checkpoint's files, revision and adapter."""
    return {"path": str(Path(path).resolve()), "revision": revision,
            "adapter": str(Path(adapter).resolve()) if adapter else None}


def store_location(spec: str | Path | None) -> str:
    """An audit store's place, spelled one way (``sqlite:///x``, ``x`` and ``./x`` are the same
    store); None is the default store."""
    from medgem.config import audit_path

    text = str(spec) if spec else str(audit_path())
    if text == ":memory:" or ("://" in text and not text.startswith("sqlite:///")):
        return text
    return str(Path(text.removeprefix("sqlite:///")).expanduser().resolve())


def write_state(*, host: str, port: int, served_name: str, model_identity: dict[str, str | None],
                engine: str, keys_required: bool, variant: str | None, model_id: str = "",
                audit: str = "") -> Path:
    """Announce this serving process; returns the file to remove when it stops."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "pid": os.getpid(), "uid": os.getuid(), "host": host, "port": port,
        "served_name": served_name, "model_id": model_id or served_name, "model": model_identity,
        "engine": engine, "keys_required": keys_required, "variant": variant, "audit": audit,
        "started": time.time(), "process": process_mark(os.getpid()),
    }))
    tmp.replace(path)
    return path


def running_servers() -> list[tuple[RunningServer, dict[str, Any]]]:
    """This user's live servers with their state, oldest first. Stale state files (the process
    gone, or its port not answering) are removed; other users' files are left alone, unread."""
    folder = state_dir()
    if not folder.is_dir():
        return []
    found: list[tuple[RunningServer, dict[str, Any]]] = []
    for path in sorted(folder.glob("*.json")):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            state: dict[str, Any] = json.loads(path.read_text())
            pid = int(state["pid"])
            port = int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # half-written or not ours to read: never trusted
            continue
        if int(state.get("uid", -1)) != os.getuid():
            continue
        url = _url(str(state.get("host", "127.0.0.1")), port)
        mark = str(state.get("process") or "")
        if not is_recorded_process(pid, mark) or not _answers(url):
            path.unlink(missing_ok=True)  # gone, or its pid is another program's now
            continue
        found.append((RunningServer(
            pid, url, str(state.get("served_name", "")), bool(state.get("keys_required")),
            state.get("variant"), port, str(state.get("model_id", state.get("served_name", ""))),
            str(state.get("audit", "")), float(state.get("started", 0.0)),
            str(state.get("engine", "")), path, mark), state))
    return sorted(found, key=lambda pair: pair[0].started)


def find_server(model_identity: dict[str, str | None], *, engine: str = "auto",
                have_key: bool = False, audit: str | None = None) -> RunningServer | None:
    """A live local server of this user running this model and writing to the ``audit`` store
    (:func:`store_location`), or None."""
    for server, state in running_servers():
        if (state.get("model") == model_identity and state.get("host") in _LOOPBACK
                and engine in ("auto", state.get("engine"))
                and (have_key or not state.get("keys_required"))
                and audit in (None, state.get("audit"))
                and (health(server.url) or {}).get("status") == "ok"):  # not warming up or draining
            return server
    return None


def requests_served(url: str) -> int | None:
    """The answers and refusals a server counted (its /metrics), or None when it does not say."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    counts = re.findall(r"^medgem_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(c) for c in counts))


def health(url: str) -> dict[str, Any] | None:
    """The server's /healthz body (ok, warming, draining), or None when it does not answer."""
    import urllib.error

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while warming up or draining: a body too
        try:
            body = json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


# --- the port ----------------------------------------------------------------------------------


def hold_port(host: str, port: int) -> socket.socket:
    """Bind and listen on the port now, before any model loads, so a taken port is said at once
    and nobody takes it during the load (uvicorn serves on this very socket).

    Raises:
        InputError: the port is taken (naming what holds it) or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holder, hint = port_holder(port)
            raise InputError(f"port {port} is already in use by {holder}", hint) from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         "check --host (an address of this machine) and --port") from None
    sock.set_inheritable(False)
    return sock


def port_holder(port: int) -> tuple[str, str]:
    """What holds ``port`` (words for "in use by ..."), and what the user can do about it."""
    other = "pick another --port"
    server = next((server for server, _ in running_servers() if server.port == port), None)
    if server is not None:
        return (f"your medgem server of {server.model_id or server.served_name} (pid {server.pid})",
                f"reuse it: `medgem ask ... --server {server.url}` (or the same --model, which "
                f"finds it), stop it with `medgem stop {port}`, or {other}")
    pid = _listener_pid(port)
    if pid is None:
        return "another program (not visible to you: another user's)", other
    command = _command_line(pid)
    if "medgem" in command and " serve" in command:
        return (f"a medgem server (pid {pid}) that is not yours or is still starting",
                f"wait for it, ask its owner, or {other}")
    return f"pid {pid} ({command[:60] or 'unknown program'})", other


def _listener_pid(port: int) -> int | None:
    """The pid with a listening socket on ``port`` (None where it cannot be seen: another
    user's process, or a system that shows sockets to root only)."""
    import psutil

    try:
        sockets = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    return next((sock.pid for sock in sockets if sock.status == psutil.CONN_LISTEN and sock.pid
                 and sock.laddr and sock.laddr.port == port), None)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


# --- liveness ----------------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else ("[::1]" if ":" in host else host)
    return f"http://{host}:{port}"


def process_mark(pid: int) -> str | None:
    """What tells the process now holding ``pid`` from any other that held or will hold it: the
    boot and its start in clock ticks since boot (Linux: /proc/sys/kernel/random/boot_id and
    field 22 of /proc/PID/stat), elsewhere psutil's creation time. None when no such process can
    be seen (it has ended)."""
    if Path("/proc/self/stat").is_file():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: count after its last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        return f"linux:{boot}:{fields[19]}" if len(fields) > 19 else None
    import psutil

    try:
        return f"psutil:{psutil.Process(pid).create_time():.3f}"
    except (psutil.Error, OSError):
        return None


def is_recorded_process(pid: int, mark: str) -> bool:
    """The process on ``pid`` is the one a state file recorded (a file without a mark is never
    taken on trust)."""
    return bool(mark) and process_mark(pid) == mark


def signal_server(server: RunningServer, signum: int) -> bool:
    """Send ``signum`` to the server's process, and to nothing else: False (nothing sent) when
    that process has ended, whatever holds its pid now.

    Where Linux gives a process handle (pidfd) the handle is taken first and the process then
    checked, so the signal cannot reach a program that took the pid in between.

    Raises:
        PermissionError: the process is not this user's to signal.
    """
    import signal

    handle = None
    try:
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            handle = os.pidfd_open(server.pid)
        if not is_recorded_process(server.pid, server.mark):
            return False
        if handle is None:
            os.kill(server.pid, signum)
        else:
            signal.pidfd_send_signal(handle, signum)
    except ProcessLookupError:
        return False
    finally:
        if handle is not None:
            os.close(handle)
    return True


def _answers(url: str) -> bool:
    """Something accepts connections at the URL's port (a server still loading does: it holds
    its listening socket from before the load)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False
