"""Per-engine options: a flag the chosen engine cannot honour is an error, never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from medgem.cli.common import as_flag_error
from medgem.engines import OPTIONS, EngineOptions
from medgem.engines.options import OptionsError, options_for
from medgem.errors import InputError


def flag_options(engine: str, fields: dict[str, object]) -> EngineOptions:
    """The engine's options from flag values, a field it does not take worded as the CLI
    words it (the refusal MedGemma.load raises, as cli/common.py turns it into a flag)."""
    try:
        return options_for(engine, fields)
    except OptionsError as exc:
        raise as_flag_error(exc) from None


def test_each_engine_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(InputError, match=r"--n-ctx does not apply to the hf engine.*--engine llamacpp"):
        flag_options("hf", {"n_ctx": 4096})
    with pytest.raises(InputError, match="--quantize does not apply to the llamacpp engine"):
        flag_options("llamacpp", {"quantize": "4bit"})
    with pytest.raises(InputError, match="--device does not apply to the llamacpp engine"):
        flag_options("llamacpp", {"device": "cuda"})
    with pytest.raises(InputError, match="--base-url does not apply to the hf-pipeline engine"):
        flag_options("hf-pipeline", {"base_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(InputError, match="--threads does not apply to the remote engine"):
        flag_options("remote", {"threads": 2})


def test_defaults_and_honoured_options_pass() -> None:
    for name in OPTIONS:
        flag_options(name, {})
    flag_options("llamacpp", {"n_ctx": 2048, "threads": 1, "device": "cpu"})
    flag_options("hf", {"device": "cpu", "dtype": "float32"})
    flag_options("remote", {"base_url": "http://127.0.0.1:1/v1", "api_key": "k"})


def test_cli_n_ctx_under_transformers_is_one_line_before_loading(tiny_vlm_checkpoint: Path) -> None:
    result = run_cli("ask", "--model", str(tiny_vlm_checkpoint), "--engine", "hf", "--n-ctx", "4096",
                     "Hi")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--n-ctx does not apply to the hf engine" in lines[0], result.stderr
