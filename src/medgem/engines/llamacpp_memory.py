"""Memory for the llama.cpp engine: what ``--parallel`` KV slots cost (checked before loading)
and the cache of image embeddings kept across conversations."""

from __future__ import annotations

import ctypes
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
    """Least-recently-used image embeddings (ctypes float arrays), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, embeddings: Any) -> None:
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
