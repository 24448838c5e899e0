"""The environment variables the engines take, read in one place: where options are built.

No module under ``medgem.engines`` reads the environment; the edges (the CLI, ``MedGemma.load``,
the llama.cpp probe's child process) call :func:`engine_environment` and pass the fields on
inside the engine's options (``medgem.engines.options``); fields set explicitly win.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

_ON, _OFF = ("on", "1", "yes"), ("off", "0", "no")


def _switch(text: str) -> bool | None:
    value = text.strip().lower()
    return True if value in _ON else False if value in _OFF else None


# engine -> field -> (variables, first set wins; how the text becomes the field's value)
_VARIABLES: dict[str, dict[str, tuple[tuple[str, ...], Callable[[str], object]]]] = {
    "llamacpp": {
        "vision": (("MEDGEM_VISION",), str),
        "vision_dtype": (("MEDGEM_VISION_DTYPE",), str),
        "embed_cache_dir": (("MEDGEM_EMBED_CACHE_DIR",), str),
        "embed_cache_mb": (("MEDGEM_EMBED_CACHE_MB",), str),
        "embed_cache_disk_mb": (("MEDGEM_EMBED_CACHE_DISK_MB",), str),
        "cpu_variant": (("MEDGEM_LLAMA_CPU_VARIANT",), str.strip),
        "repack": (("MEDGEM_LLAMA_REPACK",), _switch),
        "kv_unified": (("MEDGEM_LLAMA_KV_UNIFIED",), _switch),
        "native_logs": (("MEDGEM_LLAMA_LOGS",), lambda text: True),
        "probe": (("MEDGEM_LLAMA_PROBE",), lambda text: text.strip() != "0"),
    },
    "remote": {
        "base_url": (("MEDGEM_BASE_URL", "OPENAI_BASE_URL"), str),
        "api_key": (("MEDGEM_API_KEY", "OPENAI_API_KEY"), str),
    },
}


def engine_environment(engine: str, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The option fields the environment sets for ``engine`` (a registry name); unset and
    empty variables, and switches that say neither on nor off, set nothing.

    ``MEDGEM_VISION``, ``MEDGEM_VISION_DTYPE``, ``MEDGEM_EMBED_CACHE_DIR``,
    ``MEDGEM_EMBED_CACHE_MB``, ``MEDGEM_EMBED_CACHE_DISK_MB``, ``MEDGEM_LLAMA_CPU_VARIANT``,
    ``MEDGEM_LLAMA_REPACK=on|off``, ``MEDGEM_LLAMA_LOGS``, ``MEDGEM_LLAMA_PROBE=0`` (llamacpp);
    ``MEDGEM_BASE_URL`` / ``OPENAI_BASE_URL``, ``MEDGEM_API_KEY`` / ``OPENAI_API_KEY`` (remote).
    """
    environ = os.environ if environ is None else environ
    fields: dict[str, object] = {}
    for field, (names, parse) in _VARIABLES.get(engine, {}).items():
        text = next((environ[name] for name in names if environ.get(name, "").strip()), None)
        if text is not None and (value := parse(text)) not in (None, ""):
            fields[field] = value
    return fields
