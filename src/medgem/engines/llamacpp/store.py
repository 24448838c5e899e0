"""The medgem cache's small JSON stores (``speeds.json``, ``kernels.json``): read
whole, replaced atomically, best effort (an unreadable store reads as empty, an unwritable
cache is skipped: a figure lost costs a measurement again, never a request)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

store_lock = threading.Lock()  # one writer at a time in this process, for every store


def read_store(path: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_store(path: Path, data: dict[str, dict]) -> None:  # type: ignore[type-arg]
    """Replace the store atomically; an unwritable cache is skipped (best effort)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(out.name, path)
    except OSError:
        pass
