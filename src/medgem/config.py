"""The user's settings and medgem's folders: read once at the edge, passed inward frozen.

The settings file is ``$MEDGEM_CONFIG`` or ``<config dir>/medgem/config.toml``::

    model = "demo"                       # the default --model
    model_dirs = ["~/models", "/data/checkpoints"]   # searched by name, listed by `medgem models`

    [llamacpp]                           # the engines' settings (see EngineSettings)
    vision_dtype = "float32"

Precedence, for each setting: a flag (applied by the caller), then the environment
(``MEDGEM_MODEL``, ``MEDGEM_MODEL_DIRS`` separated by ``:``, the engines' variables listed in
:class:`LlamaCppSettings` and :class:`RemoteSettings`), then the file. One pydantic-settings
model, :class:`Settings`, holds the result; no module under ``medgem.engines`` reads the
environment: the edges pass :meth:`Settings.engine_fields` on inside the engine's options.

The folders follow the platform's conventions (platformdirs: ``XDG_*`` on Linux), each with a
``MEDGEM_*`` override: the config folder, the cache (``MEDGEM_CACHE``: the demo model, records of
converted and pulled models, running servers' state), the audit store (``MEDGEM_AUDIT_DB``) and the
server's key file (``MEDGEM_API_KEYS``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from medgem.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_APP = "medgem"


def _override(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/medgem`` (``~/.config/medgem``) or the platform's equivalent."""
    return platformdirs.user_config_path(_APP, appauthor=False)


def cache_dir() -> Path:
    """medgem's own cache: ``$MEDGEM_CACHE``, else ``$XDG_CACHE_HOME/medgem`` (``~/.cache/medgem``)."""
    return _override("MEDGEM_CACHE") or platformdirs.user_cache_path(_APP, appauthor=False)


def config_path() -> Path:
    """Where the settings file is (it need not exist): ``$MEDGEM_CONFIG`` or config_dir()/config.toml."""
    return _override("MEDGEM_CONFIG") or config_dir() / "config.toml"


def audit_path() -> Path:
    """The default audit store: ``$MEDGEM_AUDIT_DB`` or ``$XDG_DATA_HOME/medgem/audit.sqlite``."""
    return _override("MEDGEM_AUDIT_DB") or platformdirs.user_data_path(_APP, appauthor=False) / "audit.sqlite"


def key_file_path() -> Path:
    """The server's API-key file: ``$MEDGEM_API_KEYS`` or config_dir()/api-keys.json."""
    return _override("MEDGEM_API_KEYS") or config_dir() / "api-keys.json"


#: pydantic's switch words: on/off, yes/no, y/n, true/false, t/f, 1/0 (any case, spaces around
#: ignored); anything else is refused
_Switch = Annotated[bool | None, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]


class LlamaCppSettings(BaseModel):
    """The llama.cpp engine's settings from the environment or the file's ``[llamacpp]`` table:
    ``MEDGEM_VISION``, ``MEDGEM_VISION_DTYPE``, ``MEDGEM_EMBED_CACHE_DIR``,
    ``MEDGEM_EMBED_CACHE_MB``, ``MEDGEM_EMBED_CACHE_DISK_MB``, ``MEDGEM_LLAMA_CPU_VARIANT``,
    ``MEDGEM_LLAMA_REPACK=on|off``, ``MEDGEM_LLAMA_KV_UNIFIED=on|off``,
    ``MEDGEM_LLAMA_LOGS`` (any value: on),
    ``MEDGEM_LLAMA_PROBE=0`` (off). The engine's options model checks the values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vision: str | None = None
    vision_dtype: str | None = None
    embed_cache_dir: str | None = None
    embed_cache_mb: str | None = None
    embed_cache_disk_mb: str | None = None
    cpu_variant: str | None = None
    repack: _Switch = None
    kv_unified: _Switch = None
    native_logs: _Switch = None
    probe: _Switch = None


class RemoteSettings(BaseModel):
    """The remote engine's server and key: ``MEDGEM_BASE_URL`` (else ``OPENAI_BASE_URL``),
    ``MEDGEM_API_KEY`` (else ``OPENAI_API_KEY``), or the file's ``[remote]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    api_key: str | None = None


# variable -> (engine table, field, how its text reads); for each field the first one set wins
_ENGINE_VARIABLES: tuple[tuple[str, str, str, Any], ...] = (
    ("MEDGEM_VISION", "llamacpp", "vision", str),
    ("MEDGEM_VISION_DTYPE", "llamacpp", "vision_dtype", str),
    ("MEDGEM_EMBED_CACHE_DIR", "llamacpp", "embed_cache_dir", str),
    ("MEDGEM_EMBED_CACHE_MB", "llamacpp", "embed_cache_mb", str),
    ("MEDGEM_EMBED_CACHE_DISK_MB", "llamacpp", "embed_cache_disk_mb", str),
    ("MEDGEM_LLAMA_CPU_VARIANT", "llamacpp", "cpu_variant", str.strip),
    ("MEDGEM_LLAMA_REPACK", "llamacpp", "repack", str),
    ("MEDGEM_LLAMA_KV_UNIFIED", "llamacpp", "kv_unified", str),
    ("MEDGEM_LLAMA_LOGS", "llamacpp", "native_logs", lambda text: True),
    ("MEDGEM_LLAMA_PROBE", "llamacpp", "probe", lambda text: text.strip() != "0"),
    ("MEDGEM_BASE_URL", "remote", "base_url", str),
    ("OPENAI_BASE_URL", "remote", "base_url", str),
    ("MEDGEM_API_KEY", "remote", "api_key", str),
    ("OPENAI_API_KEY", "remote", "api_key", str),
)


class _SettingsFile(PydanticBaseSettingsSource):
    """The TOML file as a settings source, checked with messages that say how to fix it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole table

    def __call__(self) -> dict[str, Any]:
        return read_file(self.path)


class _Environment(EnvSettingsSource):
    """MEDGEM_* variables; an empty MEDGEM_MODEL means "not set" (the file may still name one),
    while an empty MEDGEM_MODEL_DIRS means "no folders"; the engines' variables fill their
    tables (unset and empty ones set nothing; pydantic-settings merges them over the file's
    tables field by field)."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        if not values.get("model"):
            values.pop("model", None)
        tables: dict[str, dict[str, object]] = {}
        for variable, table, field, parse in _ENGINE_VARIABLES:
            text = os.environ.get(variable, "")
            if text.strip() and field not in tables.setdefault(table, {}):
                tables[table][field] = parse(text)
        return values | {table: fields for table, fields in tables.items() if fields}


class Settings(BaseSettings):
    """What the environment and the settings file say.

    Attributes:
        model: the default model name or path; None when neither says.
        model_dirs: folders holding local checkpoints, searched by name.
        dicomweb_token: the bearer token sent to DICOMweb PACS (``--dicomweb-token`` wins).
        fhir_token: the bearer token sent to FHIR servers (``--fhir-token`` wins).
        source: where ``model`` came from ("MEDGEM_MODEL", the file's path, or None).
        llamacpp, remote: the engines' settings (options set explicitly win over them).
    """

    model_config = SettingsConfigDict(env_prefix="MEDGEM_", frozen=True, extra="ignore",
                                      protected_namespaces=())

    model: str | None = None
    model_dirs: Annotated[tuple[Path, ...], NoDecode] = ()
    dicomweb_token: str | None = None
    fhir_token: str | None = None
    source: str | None = None
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    remote: RemoteSettings = RemoteSettings()

    def engine_fields(self, engine: str) -> dict[str, object]:
        """The option fields the settings set for ``engine`` (a registry name)."""
        table = {"llamacpp": self.llamacpp, "remote": self.remote}.get(engine)
        return table.model_dump(exclude_none=True) if table is not None else {}

    @field_validator("model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return value or None

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _folders(cls, value: object) -> object:
        if isinstance(value, str):  # the environment: folders separated like PATH
            value = [part for part in value.split(os.pathsep) if part]
        if isinstance(value, (list, tuple)):
            return tuple(Path(str(folder)).expanduser() for folder in value)
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls), _SettingsFile(settings_cls, config_path())


def read_file(path: Path | None = None) -> dict[str, object]:
    """The settings file's table, checked; {} when there is no file.

    Raises:
        InputError: unreadable TOML, an unknown key or a value of the wrong type.
    """
    path = path or config_path()
    if not path.is_file():
        if os.environ.get("MEDGEM_CONFIG"):
            raise InputError(f"MEDGEM_CONFIG names '{path}', which does not exist",
                             "create it or unset MEDGEM_CONFIG")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"the config file '{path}' is not valid TOML ({exc})",
                         "fix it, or move it away") from exc
    known = set(Settings.model_fields) - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"the config file '{path}' has unknown setting(s) {', '.join(unknown)}",
                         f"the settings are: {', '.join(sorted(known))}")
    for table in ("llamacpp", "remote"):
        if table in data and not isinstance(data[table], dict):
            raise InputError(f"'{table}' in '{path}' must be a table", f"write [{table}] on its own line")
    if "model" in data and not isinstance(data["model"], str):
        raise InputError(f"'model' in '{path}' must be a string", 'write model = "4b-it"')
    dirs = data.get("model_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise InputError(f"'model_dirs' in '{path}' must be a list of folders",
                         'write model_dirs = ["~/models"]')
    if data.get("model"):
        data["source"] = str(path)
    return data


def load_settings() -> Settings:
    """The environment over the settings file (flags are applied by the caller, over both).

    Raises:
        InputError: a broken settings file or environment value.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"the setting '{'.'.join(map(str, first['loc']))}' is invalid "
                         f"({first['msg']})", "fix MEDGEM_* or the config file") from exc
    if os.environ.get("MEDGEM_MODEL"):
        return settings.model_copy(update={"source": "MEDGEM_MODEL"})
    return settings
