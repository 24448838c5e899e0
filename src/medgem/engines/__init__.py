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
    adapter: str | None = None  # LoRA adapter: a PEFT folder (hf) or a GGUF LoRA (llamacpp)
    parallel: int = 1  # requests decoded together (see medgem.engines.batching)
    vision: str | None = None  # llama.cpp: where the vision tower runs ("auto", "llamacpp", "torch")


# name -> "module:factory". A factory takes (checkpoint, options) and returns an Engine; the
# remote engine's "checkpoint" is the served model's name.
ENGINES: dict[str, str] = {
    "hf": "medgem.engines.hf:HFEngine",  # the direct path is the default mode
    "hf-pipeline": "medgem.engines.hf:load_pipeline",
    "llamacpp": "medgem.engines.llamacpp:load_llamacpp",
    # The model is the name an OpenAI-compatible server knows, not a local checkpoint.
    "remote": "medgem.engines.remote:load_remote",
}
ALIASES: dict[str, str] = {
    "transformers": "hf", "pipeline": "hf-pipeline", "llama.cpp": "llamacpp", "gguf": "llamacpp",
}


# The options each engine honours; any other option set away from its default is refused, so
# a flag is never silently ignored (--n-ctx under transformers, --quantize under llama.cpp).
HONOURED: dict[str, frozenset[str]] = {
    "hf": frozenset({"device", "dtype", "quantize", "adapter", "parallel"}),
    "hf-pipeline": frozenset({"device", "dtype", "quantize", "adapter"}),
    "llamacpp": frozenset({"n_ctx", "threads", "parallel", "vision", "adapter"}),
    "remote": frozenset({"base_url", "api_key", "parallel"}),
}
_FLAGS = {option: "--" + option.replace("_", "-") for option in (
    "device", "dtype", "quantize", "n_ctx", "threads", "base_url", "api_key", "adapter", "parallel",
    "vision")}
# llama.cpp runs on the CPU anyway; one request at a time needs no batching.
_DEFAULTS = {"device": ("auto", "cpu"), "dtype": ("auto",), "parallel": (1,), "vision": ("auto",)}


def check_options(name: str, options: EngineOptions) -> None:
    """Refuse options the named engine cannot honour.

    Raises:
        InputError: naming the flag, the engine, and which engine takes it.
    """
    honoured = HONOURED[name]
    for option, flag in _FLAGS.items():
        value = getattr(options, option)
        if option in honoured or value is None or value in _DEFAULTS.get(option, ()):
            continue
        takers = sorted(engine for engine, names in HONOURED.items() if option in names)
        raise InputError(
            f"{flag} does not apply to the {name} engine",
            f"drop {flag}, or use --engine {' or '.join(takers)}",
        )


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
    check_options(key, options)
    module_name, factory_name = ENGINES[key].split(":")
    factory: Callable[[Checkpoint | str, EngineOptions], Engine] = getattr(
        importlib.import_module(module_name), factory_name
    )
    return factory(checkpoint, options)


def choose_engine(checkpoint: Checkpoint) -> str:
    """The auto choice: GGUF -> llama.cpp; HF checkpoints -> transformers' direct path."""
    return "llamacpp" if checkpoint.format == "gguf" else "hf"
