"""Running `medgem serve` processes, so `ask` and `describe` reuse a loaded model (as Ollama does).

``serve`` writes a small state file (pid, address, served name, the checkpoint's identity) into
``<medgem cache>/servers/`` once the model is loaded, and removes it when it stops. A command
that would load the same checkpoint sends its question to that server instead. A state file
whose process is gone (a killed server) is ignored and removed.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.config import cache_dir

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


@dataclass(frozen=True)
class RunningServer:
    pid: int
    url: str  # the API root, without /v1
    served_name: str
    keys_required: bool
    variant: str | None


def state_dir() -> Path:
    return cache_dir() / "servers"


def identity(path: Path | str, revision: str | None, adapter: str | None) -> dict[str, str | None]:
    """What makes two loads the same model: the checkpoint's files, revision and adapter."""
    return {"path": str(Path(path).resolve()), "revision": revision,
            "adapter": str(Path(adapter).resolve()) if adapter else None}


def write_state(*, host: str, port: int, served_name: str, model_identity: dict[str, str | None],
                engine: str, keys_required: bool, variant: str | None) -> Path:
    """Announce this serving process; returns the file to remove when it stops."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "pid": os.getpid(), "host": host, "port": port, "served_name": served_name,
        "model": model_identity, "engine": engine, "keys_required": keys_required,
        "variant": variant,
    }))
    tmp.replace(path)
    return path


def find_server(model_identity: dict[str, str | None], *, engine: str = "auto",
                have_key: bool = False) -> RunningServer | None:
    """A live local server running this model, or None. Stale state files are removed."""
    folder = state_dir()
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            pid = int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            continue
        if state.get("model") != model_identity or state.get("host") not in _LOOPBACK:
            continue
        if engine not in ("auto", state.get("engine")):
            continue
        if state.get("keys_required") and not have_key:
            continue
        host = state["host"]
        host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else ("[::1]" if ":" in host else host)
        url = f"http://{host}:{int(state['port'])}"
        if _healthy(url):
            return RunningServer(pid, url, str(state["served_name"]), bool(state.get("keys_required")),
                                 state.get("variant"))
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, but not ours to use
        return True
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False
