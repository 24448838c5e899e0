"""The llama.cpp engine's image side: libmtmd's context for the vision projector, the tower that
runs it (llama.cpp's clip, or the PyTorch tower where ``medgem doctor --measure`` found it
faster) and the embedding cache, so an image's soft tokens come from the cache when these pixels
were encoded before (any slot, any conversation)."""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from medgem.engines.llamacpp.memory import EmbeddingCache
from medgem.engines.llamacpp.native import mtmd_context
from medgem.engines.options import LlamaCppOptions
from medgem.errors import EngineUnavailableError, NotACheckpointError


class Vision:
    """One projector on one loaded model. ``lock`` guards libmtmd's context, which ``prepare``
    (image preprocessing) uses from other threads."""

    def __init__(self, lib: Any, mtmd: Any, model: Any, mmproj: Path, options: LlamaCppOptions,
                 threads: int, embd: int) -> None:
        from medgem.engines.llamacpp.kernels import choose_vision
        from medgem.engines.llamacpp.vision_torch import TorchTower

        self._mtmd = mtmd
        self._embd = embd
        self.lock = threading.Lock()
        self.ctx = mtmd_context(lib, mtmd, model, mmproj, threads)
        if not self.ctx:
            raise NotACheckpointError(
                f"llama.cpp could not load the vision projector '{mmproj.name}'",
                "the file is corrupt or does not belong to this model: convert it again",
            )
        try:  # a tower or cache that fails to start must not leave the context allocated
            # What `medgem doctor --measure` measured here, else the clip: a first image question
            # never waits a minute for a measurement it did not ask for.
            self.choice = choose_vision(options.vision)  # (path, why)
            self.path = self.choice[0]
            self.tower = (TorchTower(mmproj, threads=threads, dtype=options.vision_dtype)
                          if self.path == "torch" else None)
            self.dtype = self.tower.dtype if self.tower is not None else None
            # Bounded (embed_cache_mb); on disk too with embed_cache_dir, per projector and tower,
            # so embeddings from another model or path are never mixed in.
            folder = options.embed_cache_dir
            self._cache = EmbeddingCache(options.embed_cache_mb << 20,
                                         folder / self._namespace(mmproj) if folder else None,
                                         options.embed_cache_disk_mb << 20)
        except Exception:
            self.close()
            raise

    def _namespace(self, mmproj: Path) -> str:
        """The projector file (name, size, modification time) and the tower that ran it."""
        stat = mmproj.stat()
        ident = f"{mmproj.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.path}|{self.dtype or ''}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def embeddings(self, chunk: Any, key: str, pixels: Any) -> tuple[Any, float | None]:
        """An image chunk's soft-token embeddings (float32, tokens x embd) and the seconds the
        tower took for them (None: they came from the cache)."""
        mtmd = self._mtmd
        embeddings = self._cache.get(key)
        if embeddings is not None:
            return embeddings, None
        tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        began = time.perf_counter()
        if self.tower is not None:
            array = self.tower.embed(pixels)
            if array.shape != (tokens, self._embd):
                raise EngineUnavailableError(
                    f"the PyTorch vision tower gave {array.shape} soft tokens, llama.cpp expects "
                    f"{tokens} x {self._embd}", "use --vision llamacpp")
            embeddings = (ctypes.c_float * array.size).from_buffer_copy(array.tobytes())
        else:
            with self.lock:
                status = mtmd.mtmd_encode_chunk(self.ctx, chunk)  # the vision tower
                if status != 0:
                    raise EngineUnavailableError(f"llama.cpp failed to encode an image (status {status})",
                                                 "check the image and the mmproj file")
                embeddings = (ctypes.c_float * (tokens * self._embd))()
                ctypes.memmove(embeddings, mtmd.mtmd_get_output_embd(self.ctx), ctypes.sizeof(embeddings))
        self._cache.put(key, embeddings)
        return embeddings, time.perf_counter() - began

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
