"""The engine registry: one name -> one module, built-in engines registered like any other."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medgem.errors import InputError

if TYPE_CHECKING:
    from medgem.engines.base import Engine
    from medgem.resolve import Checkpoint


@dataclass(frozen=True)
class EngineOptions:
    """How to run a checkpoint; built at the edge (CLI flags, server config) and passed in."""

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # "auto", "bfloat16", "float16", "float32"
    quantize: str | None = None  # "4bit" / "8bit" (bitsandbytes, CUDA)
    demo: bool = False
    progress: bool = True
    check_memory: bool = True
    base_url: str | None = None  # remote engine
    api_key: str | None = None  # remote engine
    n_ctx: int | None = None  # llama.cpp context size
    threads: int | None = None


# name -> "module:factory". A factory takes (checkpoint, options) and returns an Engine; the
# remote engine's "checkpoint" is the served model's name.
ENGINES: dict[str, str] = {
    "hf": "medgem.engines.hf:load_direct",
    "hf-pipeline": "medgem.engines.hf:load_pipeline",
    "llamacpp": "medgem.engines.llamacpp:load_llamacpp",
    # The model is the name an OpenAI-compatible server knows, not a local checkpoint.
    "remote": "medgem.engines.remote:load_remote",
}
ALIASES: dict[str, str] = {
    "transformers": "hf", "pipeline": "hf-pipeline", "llama.cpp": "llamacpp", "gguf": "llamacpp",
}


def engine_names() -> list[str]:
    return sorted(ENGINES)


def load_engine(name: str, checkpoint: Checkpoint | str, options: EngineOptions) -> Engine:
    """Build the named engine for a resolved checkpoint (for ``remote``: a served model name).

    Raises:
        InputError: an unknown engine name.
        EngineUnavailableError: the engine's package is missing or it cannot run here.
    """
    key = ALIASES.get(name, name)
    if key not in ENGINES:
        raise InputError(
            f"unknown engine '{name}'", f"choose one of: {', '.join(engine_names())}, auto"
        )
    module_name, factory_name = ENGINES[key].split(":")
    factory: Callable[[Checkpoint | str, EngineOptions], Engine] = getattr(
        importlib.import_module(module_name), factory_name
    )
    return factory(checkpoint, options)


def choose_engine(checkpoint: Checkpoint) -> str:
    """The auto choice: GGUF -> llama.cpp; HF checkpoints -> transformers' direct path."""
    if checkpoint.format == "gguf" and "llamacpp" in ENGINES:
        return "llamacpp"
    return "hf"
