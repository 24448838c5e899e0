"""Memory for the llama.cpp engine: what ``--parallel`` KV slots cost (checked before loading)
and the cache of image embeddings kept across conversations."""

from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from medgem.engines.gguf.read import GGUFHeader
from medgem.errors import ResourceError


def kv_bytes_per_sequence(header: GGUFHeader, n_ctx: int, n_batch: int) -> int:
    """KV-cache bytes one sequence of ``n_ctx`` takes (f16 keys and values). Gemma 3 keeps the
    full context on every sixth layer only; the others hold the sliding window (and a batch)."""
    layers = int(header.get("gemma3.block_count", 0))
    heads = int(header.get("gemma3.attention.head_count_kv", 0) or 0)
    width = heads * (int(header.get("gemma3.attention.key_length", 0) or 0)
                     + int(header.get("gemma3.attention.value_length", 0) or 0))
    window = int(header.get("gemma3.attention.sliding_window", 0) or n_ctx)
    full_layers = (layers + 5) // 6
    cells = full_layers * n_ctx + (layers - full_layers) * min(n_ctx, window + n_batch)
    return cells * width * 2


def check_kv_memory(header: GGUFHeader, path: Path, n_ctx: int, parallel: int,
                    n_batch: int) -> None:
    """Refuse, before loading, weights plus ``parallel`` KV caches that exceed available RAM.

    Raises:
        ResourceError: naming what it needs and the --parallel / --n-ctx that would fit.
    """
    from medgem.hardware import detect_hardware

    per_sequence = kv_bytes_per_sequence(header, n_ctx, n_batch)
    weights = path.stat().st_size
    available = detect_hardware().ram_available
    need = weights + parallel * per_sequence
    if need <= available:
        return
    fits = max(0, (available - weights) // per_sequence) if per_sequence else 0
    gib = 1 << 30
    raise ResourceError(
        f"--parallel {parallel} at --n-ctx {n_ctx} needs {need / gib:.1f} GiB "
        f"({weights / gib:.1f} GiB weights + {parallel} x {per_sequence / gib:.2f} GiB KV cache) "
        f"but {available / gib:.1f} GiB is available",
        f"use --parallel {fits}" if fits else "lower --n-ctx, or free memory",
    )


class EmbeddingCache:
    """Least-recently-used image embeddings (ctypes float arrays), bounded in bytes; with
    ``folder``, also kept on disk (raw float32, one file per image, oldest removed past
    ``disk_bytes``) so that another process -- the next `medgem ask` -- skips the tower too.
    The folder holds data derived from patient images: it belongs where PHI may be kept."""

    def __init__(self, max_bytes: int, folder: Path | None = None, disk_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self.folder = folder
        self.disk_bytes = disk_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        path = self._file(key)
        if path is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: the last to be removed
        except OSError:
            return None
        item = (ctypes.c_float * (len(data) // 4)).from_buffer_copy(data)
        self._remember(key, item)
        return item

    def put(self, key: str, embeddings: Any) -> None:
        self._remember(key, embeddings)
        path = self._file(key)
        if path is None or path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(bytes(embeddings))
            os.replace(partial, path)
            self._trim_disk()
        except OSError:
            pass  # a full or read-only disk costs the next process a tower run, nothing more

    def _remember(self, key: str, embeddings: Any) -> None:
        size = ctypes.sizeof(embeddings)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = embeddings
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= ctypes.sizeof(dropped)

    def _file(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / (key.replace(":", "-") + ".f32")

    def _trim_disk(self) -> None:
        assert self.folder is not None
        files = sorted(self.folder.glob("*.f32"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        for old in files:
            if total <= self.disk_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
