"""The settings model: the file's tables, the environment over them, both under explicit options."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgem.api import _engine_options
from medgem.config import load_settings
from medgem.errors import InputError

ENGINE_VARIABLES = ("MEDGEM_VISION", "MEDGEM_VISION_DTYPE", "MEDGEM_EMBED_CACHE_DIR",
                    "MEDGEM_EMBED_CACHE_MB", "MEDGEM_EMBED_CACHE_DISK_MB", "MEDGEM_LLAMA_CPU_VARIANT",
                    "MEDGEM_LLAMA_REPACK", "MEDGEM_LLAMA_LOGS", "MEDGEM_LLAMA_PROBE",
                    "MEDGEM_BASE_URL", "OPENAI_BASE_URL", "MEDGEM_API_KEY", "OPENAI_API_KEY",
                    "MEDGEM_MODEL", "MEDGEM_MODEL_DIRS")


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config.toml"
    path.write_text("")
    monkeypatch.setenv("MEDGEM_CONFIG", str(path))
    return path


def test_the_files_engine_tables_reach_the_engines_options(config: Path) -> None:
    config.write_text('[llamacpp]\nvision_dtype = "float32"\nrepack = "off"\n'
                      '[remote]\nbase_url = "http://127.0.0.1:9/v1"\n')
    settings = load_settings()
    assert settings.engine_fields("llamacpp") == {"vision_dtype": "float32", "repack": False}
    assert settings.engine_fields("remote") == {"base_url": "http://127.0.0.1:9/v1"}
    assert settings.engine_fields("hf") == {}
    assert _engine_options("llamacpp", None)[0].vision_dtype == "float32"


def test_the_environment_wins_over_the_file_field_by_field(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text('[llamacpp]\nvision_dtype = "float32"\ncpu_variant = "zen4"\n')
    monkeypatch.setenv("MEDGEM_VISION_DTYPE", "bfloat16")
    monkeypatch.setenv("MEDGEM_LLAMA_LOGS", "yes please")  # any value switches the logs on
    monkeypatch.setenv("MEDGEM_LLAMA_PROBE", "0")
    monkeypatch.setenv("MEDGEM_EMBED_CACHE_MB", "   ")  # blank: not set
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai.example/v1")
    monkeypatch.setenv("MEDGEM_BASE_URL", "http://medgem.example/v1")  # MEDGEM_ first
    settings = load_settings()
    assert settings.engine_fields("llamacpp") == {
        "vision_dtype": "bfloat16", "cpu_variant": "zen4", "native_logs": True, "probe": False}
    assert settings.engine_fields("remote") == {"base_url": "http://medgem.example/v1"}


def test_explicit_options_win_over_the_settings(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEM_VISION_DTYPE", "bfloat16")
    assert _engine_options("llamacpp", {"vision_dtype": "float32"})[0].vision_dtype == "float32"


@pytest.mark.parametrize(("text", "says"), [
    ('[llamacpp]\nvison = "torch"\n', "llamacpp.vison"),
    ('llamacpp = "torch"\n', "must be a table"),
    ('[llamacpp]\nrepack = "sometimes"\n', "llamacpp.repack"),
])
def test_a_wrong_engine_table_is_one_line(config: Path, text: str, says: str) -> None:
    config.write_text(text)
    with pytest.raises(InputError) as caught:
        load_settings()
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_switch_that_is_neither_on_nor_off_is_refused(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGEM_LLAMA_REPACK", "maybe")
    with pytest.raises(InputError, match=r"llamacpp\.repack"):
        load_settings()
