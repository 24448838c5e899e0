"""The engine registry: one name -> one module, built-in engines registered like any other;
each engine's options model is in ``medgem.engines.options``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from medgem.engines.options import (
    OPTIONS,
    EngineOptions,
    HFOptions,
    LlamaCppOptions,
    OptionsError,
    PipelineOptions,
    RemoteOptions,
    options_for,
)
from medgem.errors import InputError

if TYPE_CHECKING:
    from medgem.engines.base import Engine
    from medgem.resolve import Checkpoint


# name -> "module:factory". A factory takes (checkpoint, options) and returns an Engine; the
# remote engine's "checkpoint" is the served model's name.
ENGINES: dict[str, str] = {
    "hf": "medgem.engines.hf:HFEngine",  # the options' type (HFOptions, PipelineOptions)
    "hf-pipeline": "medgem.engines.hf:HFEngine",  # picks the direct or the pipeline path
    "llamacpp": "medgem.engines.llamacpp:LlamaCppEngine",
    # The model is the name an OpenAI-compatible server knows, not a local checkpoint.
    "remote": "medgem.engines.remote:load_remote",
}
ALIASES: dict[str, str] = {
    "transformers": "hf", "pipeline": "hf-pipeline", "llama.cpp": "llamacpp", "gguf": "llamacpp",
}
__all__ = ["ALIASES", "ENGINES", "OPTIONS", "EngineOptions", "HFOptions", "LlamaCppOptions",
           "OptionsError", "PipelineOptions", "RemoteOptions", "choose_engine", "engine_key",
           "engine_names", "load_engine", "options_for"]


def engine_names() -> list[str]:
    return sorted(ENGINES)


def engine_key(name: str) -> str:
    """The registry name for ``name`` (aliases resolved).

    Raises:
        InputError: an unknown engine name.
    """
    key = ALIASES.get(name, name)
    if key not in ENGINES:
        raise InputError(
            f"unknown engine '{name}'", f"choose one of: {', '.join(engine_names())}, auto"
        )
    return key


def load_engine(name: str, checkpoint: Checkpoint | str,
                options: EngineOptions | Mapping[str, Any] | None = None) -> Engine:
    """Build the named engine for a resolved checkpoint (for ``remote``: a served model name).

    Args:
        options: the engine's options object (``LlamaCppOptions`` for llamacpp, ...) or a
            mapping of its fields; checked before anything loads.

    Raises:
        InputError: an unknown engine name.
        OptionsError: an option the engine does not take.
        EngineUnavailableError: the engine's package is missing or it cannot run here.
    """
    key = engine_key(name)
    checked = options_for(key, options)
    module_name, factory_name = ENGINES[key].split(":")
    factory: Callable[[Checkpoint | str, EngineOptions], Engine] = getattr(
        importlib.import_module(module_name), factory_name
    )
    return factory(checkpoint, checked)


def choose_engine(checkpoint: Checkpoint) -> str:
    """The auto choice: GGUF -> llama.cpp; HF checkpoints -> transformers' direct path."""
    return "llamacpp" if checkpoint.format == "gguf" else "hf"
