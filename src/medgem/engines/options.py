"""Each engine's options: one strict pydantic model per engine, built once at the edge (CLI
flags, the Python API, eval and tune configs; the settings file and environment through
``medgem.config.Settings``) and only read inside. A field an engine does not take is refused in one line naming what it takes
and which engines would take it, so a setting is never silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from medgem.errors import InputError

# A path given as a Path or a string; kept as the string the engines open.
PathText = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class OptionsError(InputError):
    """A field the engine does not take. ``field``, ``engine`` and ``takers`` (the engines that
    take it) let a surface say it in its own words (the CLI names the flag)."""

    def __init__(self, field: str, engine: str, takes: list[str], takers: list[str]) -> None:
        self.field, self.engine, self.takers = field, engine, takers
        elsewhere = f"; {field} is for the {' or '.join(takers)} engine" if takers else ""
        super().__init__(f"{field} does not apply to the {engine} engine",
                         f"the {engine} engine takes {', '.join(takes)}{elsewhere}")


class EngineOptions(BaseModel):
    """What every engine takes; each engine's own model adds its fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    engine: ClassVar[str]
    #: values of fields an engine does not take that ask for nothing it does not do anyway
    #: (llama.cpp and remote servers run where they run: device "cpu" asks nothing of them)
    same_as_unset: ClassVar[dict[str, tuple[object, ...]]] = {
        "device": ("auto", "cpu"), "dtype": ("auto",), "parallel": (1,), "vision": ("auto",)}

    progress: bool = True  # load progress bars where the engine has them (transformers)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if v is not None and (
                k in cls.model_fields or v not in cls.same_as_unset.get(k, ()))}
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise OptionsError(unknown[0], cls.engine, sorted(cls.model_fields),
                                   [name for name, model in OPTIONS.items()
                                    if unknown[0] in model.model_fields])
        return data


class _TransformersOptions(EngineOptions):
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # "auto", "bfloat16", "float16", "float32"
    quantize: str | None = None  # "4bit" / "8bit" (bitsandbytes, CUDA)
    adapter: PathText | None = None  # a `medgem tune` folder or PEFT adapter
    check_memory: bool = True  # refuse weights that do not fit


class PipelineOptions(_TransformersOptions):
    """transformers' ``pipeline`` path: one request at a time."""

    engine = "hf-pipeline"


class HFOptions(_TransformersOptions):
    """transformers' direct path (processor + generate)."""

    engine = "hf"
    parallel: int = 1  # waiting requests run as one left-padded batch of up to this many


class LlamaCppOptions(EngineOptions):
    """llama.cpp on the CPU (the native settings also apply to ``medgem convert``'s quantizer)."""

    engine = "llamacpp"
    n_ctx: int | None = None  # tokens per sequence (default 8192; a CT volume needs ~23000)
    threads: int | None = None  # default: all cores this process may use
    parallel: int = 1  # sequences in one context, one KV-cache slot of n_ctx each
    adapter: PathText | None = None  # a GGUF LoRA from `medgem convert --adapter`
    check_memory: bool = True  # refuse a KV cache that does not fit
    vision: str | None = None  # where the image encoder runs: "auto", "llamacpp" or "torch"
    vision_dtype: str | None = None  # the PyTorch tower's: "bfloat16" or "float32"
    embed_cache_mb: int = 512  # image embeddings kept in memory, by pixel digest
    embed_cache_dir: Path | None = None  # and on disk, for the next process
    embed_cache_disk_mb: int = 4096
    cpu_variant: str | None = None  # force one CPU backend of a runtime-dispatch build
    repack: bool | None = None  # weight repacking into extra buffer types (None: by the CPU)
    kv_unified: bool | None = None  # one KV buffer for every sequence (None: the engine's default)
    native_logs: bool = False  # let llama.cpp and libmtmd log to stderr
    probe: bool = True  # prove the kernels in a child process before running them here


class RemoteOptions(EngineOptions):
    """An OpenAI-compatible server (vLLM, medgem serve), one or several."""

    engine = "remote"
    base_url: str | None = None  # one URL, or several separated by commas
    api_key: str | None = None
    parallel: int = 1  # requests in flight to each backend


OPTIONS: dict[str, type[EngineOptions]] = {
    model.engine: model for model in (HFOptions, PipelineOptions, LlamaCppOptions, RemoteOptions)
}


def options_for(engine: str, options: EngineOptions | Mapping[str, Any] | None = None,
                defaults: Mapping[str, Any] | None = None) -> EngineOptions:
    """The named engine's options from an options object or a mapping of its fields, over
    ``defaults`` (e.g. the environment's) for what they leave unset.

    Raises:
        OptionsError: a field the engine does not take (another engine's options object
            counts by the fields it set).
        InputError: a value of the wrong type.
    """
    model = OPTIONS[engine]
    if isinstance(options, model) and not defaults:
        return options
    given = options.model_dump(exclude_unset=True) if isinstance(options, EngineOptions) else options
    fields = {k: v for k, v in (defaults or {}).items() if k in model.model_fields}
    # None is "not given": the default (or the environment's setting) stands
    fields |= {k: v for k, v in (given or {}).items() if v is not None}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InputError(f"{engine} option {where}: {error['msg']}",
                         f"got {error['input']!r}") from None
