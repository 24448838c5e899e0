"""The user's settings: a default model and folders of local checkpoints, from a TOML file.

The file is ``$MEDGEM_CONFIG`` or ``~/.config/medgem/config.toml``::

    model = "demo"                       # the default --model
    model_dirs = ["~/models", "/data/checkpoints"]   # searched by name, listed by `medgem models`

Precedence, for each setting: a flag, then the environment (``MEDGEM_MODEL``,
``MEDGEM_MODEL_DIRS`` separated by ``:``), then this file. The settings are read once at the
edge (the CLI) and passed inward as a frozen :class:`Settings`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from medgem.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_KNOWN_KEYS = {"model", "model_dirs"}


@dataclass(frozen=True)
class Settings:
    """What the config file and the environment say.

    Attributes:
        model: the default model name or path; None when neither says.
        model_dirs: folders holding local checkpoints, searched by name.
        source: where ``model`` came from ("MEDGEM_MODEL", the file's path, or None).
    """

    model: str | None = None
    model_dirs: tuple[Path, ...] = ()
    source: str | None = None


def config_path() -> Path:
    """Where the config file is (it need not exist)."""
    explicit = os.environ.get("MEDGEM_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "medgem" / "config.toml"


def cache_dir() -> Path:
    """medgem's own cache: the demo model, the record of converted and pulled models, the state
    of running servers (``$MEDGEM_CACHE``, default ``~/.cache/medgem``)."""
    return Path(os.environ.get("MEDGEM_CACHE") or Path.home() / ".cache" / "medgem").expanduser()


def read_file(path: Path | None = None) -> dict[str, object]:
    """The config file's table, checked; {} when there is no file.

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
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise InputError(f"the config file '{path}' has unknown setting(s) {', '.join(unknown)}",
                         f"the settings are: {', '.join(sorted(_KNOWN_KEYS))}")
    if "model" in data and not isinstance(data["model"], str):
        raise InputError(f"'model' in '{path}' must be a string", 'write model = "4b-it"')
    dirs = data.get("model_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise InputError(f"'model_dirs' in '{path}' must be a list of folders",
                         'write model_dirs = ["~/models"]')
    return data


def load_settings() -> Settings:
    """The environment over the config file (flags are applied by the caller, over both).

    Raises:
        InputError: a broken config file.
    """
    path = config_path()
    data = read_file(path)
    model = os.environ.get("MEDGEM_MODEL") or None
    source = "MEDGEM_MODEL" if model else None
    if model is None and isinstance(data.get("model"), str) and data["model"]:
        model, source = str(data["model"]), str(path)
    env_dirs = os.environ.get("MEDGEM_MODEL_DIRS")
    if env_dirs is not None:
        dirs = [d for d in env_dirs.split(os.pathsep) if d]
    else:
        raw = data.get("model_dirs", [])
        dirs = [str(d) for d in raw] if isinstance(raw, list) else []
    return Settings(model=model, model_dirs=tuple(Path(d).expanduser() for d in dirs),
                    source=source)
