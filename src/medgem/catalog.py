"""Every model medgem knows by name, and what medgem itself put on this machine.

Four kinds of names:
- the MedGemma variants ("4b-it", "google/medgemma-4b-it"), in the Hugging Face cache once pulled;
- the demo model (``medgem-demo-gemma3-270m``, alias ``demo``), built into the medgem cache;
- GGUFs written by ``medgem convert``, named by their folder (recorded when written, wherever
  ``--out`` put them);
- local checkpoints in the model folders (``--dir``, ``MEDGEM_MODEL_DIRS``, the config file),
  named by their folder (or a .gguf file's stem).

The record of what medgem wrote (``models.json`` in the medgem cache) is what ``medgem rm`` trusts:
it deletes only files listed there, and hub repositories through huggingface_hub's cache API.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medgem.config import cache_dir
from medgem.errors import InputError, ModelNotFoundError
from medgem.memory import safetensors_tensors
from medgem.request.variants import ALIASES, VARIANTS, Variant

Kind = Literal["variant", "demo", "converted", "pulled", "local"]
DEMO_ALIAS = "demo"
_HF_TYPES = {"gemma3", "gemma3_text"}


@dataclass(frozen=True)
class NamedModel:
    """One model as `medgem models` lists it.

    Attributes:
        name: what ``--model`` accepts.
        kind: variant, demo, converted, pulled (a hub repo fetched by `medgem pull`) or local.
        path: where it is on this machine; None when it is not here (yet).
        format: "safetensors bf16", "pytorch .bin", or "gguf" ("" when not on this machine):
            a GGUF's quantization is read from its header by the surface that shows it
            (``cli/models``), since GGUF format code lives in ``engines.gguf`` above this module.
        size_bytes: bytes of its weight files on disk (0 when not here).
        aliases: other names that find it.
        hub_id: the Hugging Face repository, for variants and pulled models.
    """

    name: str
    kind: Kind
    path: Path | None
    format: str = ""
    size_bytes: int = 0
    aliases: tuple[str, ...] = ()
    hub_id: str | None = None

    @property
    def here(self) -> bool:
        return self.path is not None


# --- the record of what medgem wrote ----------------------------------------------------------

def record_path() -> Path:
    return cache_dir() / "models.json"


def _read_record() -> dict[str, list[dict[str, object]]]:
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {"converted": [], "pulled": []}
    return {"converted": list(data.get("converted", [])), "pulled": list(data.get("pulled", []))}


def _write_record(data: dict[str, list[dict[str, object]]]) -> None:
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a reader never sees half a record


def record_converted(files: Sequence[Path]) -> None:
    """Note the files ``medgem convert`` wrote (model.gguf, mmproj.gguf), so the folder gets a
    name and ``medgem rm`` may delete exactly these files."""
    paths = [Path(f).resolve() for f in files if f]
    folder = paths[0].parent
    data = _read_record()
    # entries whose folder is gone (deleted by hand, a temporary folder) are dropped here
    data["converted"] = [e for e in data["converted"] if e.get("folder") != str(folder)
                         and Path(str(e.get("folder"))).is_dir()]
    data["converted"].append({"folder": str(folder), "files": [str(p) for p in paths]})
    _write_record(data)


def record_pulled(repo_id: str) -> None:
    """Note a hub repository ``medgem pull`` fetched."""
    data = _read_record()
    if not any(e.get("repo_id") == repo_id for e in data["pulled"]):
        data["pulled"].append({"repo_id": repo_id})
        _write_record(data)


def forget(*, folder: Path | None = None, repo_id: str | None = None) -> None:
    """Drop an entry from the record (after ``medgem rm``)."""
    data = _read_record()
    if folder is not None:
        data["converted"] = [e for e in data["converted"] if e.get("folder") != str(folder)]
    if repo_id is not None:
        data["pulled"] = [e for e in data["pulled"] if e.get("repo_id") != repo_id]
    _write_record(data)


def converted_files(folder: Path) -> list[Path]:
    """The files medgem convert wrote into ``folder`` ([] when it wrote none there)."""
    for entry in _read_record()["converted"]:
        if entry.get("folder") == str(folder.resolve()):
            return [Path(str(f)) for f in entry.get("files", []) if isinstance(f, str)]  # type: ignore[attr-defined]
    return []


def pulled_repos() -> list[str]:
    return [str(e["repo_id"]) for e in _read_record()["pulled"] if e.get("repo_id")]


# --- listing ----------------------------------------------------------------------------------

def list_models(model_dirs: Iterable[Path] = ()) -> list[NamedModel]:
    """Every named model: variants, the demo, converted GGUFs, pulled repos, local checkpoints."""
    found: list[NamedModel] = [_variant(v) for v in VARIANTS]
    found.append(_demo())
    seen: set[Path] = set()
    for entry in _read_record()["converted"]:
        folder = Path(str(entry.get("folder")))
        model = folder / "model.gguf"
        if model.is_file():
            files = [Path(str(f)) for f in entry.get("files", [])  # type: ignore[attr-defined]
                     if Path(str(f)).is_file()]
            found.append(NamedModel(folder.name, "converted", folder, "gguf",
                                    sum(f.stat().st_size for f in files)))
            seen.add(folder)
    variant_ids = {v.hf_id for v in VARIANTS}
    for repo_id in pulled_repos():
        if repo_id not in variant_ids:
            snapshot = _hf_snapshot(repo_id)
            if snapshot is not None:
                found.append(NamedModel(repo_id, "pulled", snapshot, _folder_format(snapshot),
                                        _weight_bytes(snapshot), hub_id=repo_id))
    for folder in model_dirs:
        for candidate in _checkpoints_in(Path(folder).expanduser()):
            if candidate.resolve() in seen:
                continue
            seen.add(candidate.resolve())
            name = candidate.stem if candidate.is_file() else candidate.name
            weights = _weight_bytes(candidate) if candidate.is_dir() else candidate.stat().st_size
            fmt = "gguf" if _is_gguf_model(candidate) else _folder_format(candidate)
            found.append(NamedModel(name, "local", candidate, fmt, weights))
    return found


def find_named(name: str, model_dirs: Iterable[Path] = ()) -> NamedModel | None:
    """The demo, a converted GGUF or a local checkpoint called ``name`` (variants and hub ids
    are resolved by :mod:`medgem.resolve`).

    Raises:
        InputError: several models have that name.
    """
    wanted = name.strip().lower()
    matches = [m for m in list_models(model_dirs) if m.kind in ("demo", "converted", "local")
               and wanted in {m.name.lower(), *(a.lower() for a in m.aliases)}]
    if len({m.path for m in matches}) > 1:
        where = ", ".join(str(m.path) for m in matches)
        raise InputError(f"several models are named '{name}': {where}", "pass the path instead")
    return matches[0] if matches else None


def close_matches(name: str, model_dirs: Iterable[Path] = ()) -> list[str]:
    """Names close to a mistyped one, best first."""
    names: set[str] = set(ALIASES)
    for model in list_models(model_dirs):
        names.update((model.name, *model.aliases))
    return difflib.get_close_matches(name, sorted(names), n=4, cutoff=0.6)


def demo_path() -> Path:
    from medgem.demo.build import DEMO_ID

    return cache_dir() / DEMO_ID


def _variant(variant: Variant) -> NamedModel:
    snapshot = _hf_snapshot(variant.hf_id)
    aliases = (variant.hf_id, variant.hf_id.split("/")[1],
               *(alias for alias, key in ALIASES.items() if key == variant.key))
    if snapshot is None:
        return NamedModel(variant.key, "variant", None, aliases=aliases, hub_id=variant.hf_id)
    return NamedModel(variant.key, "variant", snapshot, _folder_format(snapshot),
                      _weight_bytes(snapshot), aliases, variant.hf_id)


def _demo() -> NamedModel:
    from medgem.demo.build import DEMO_ID

    folder = demo_path()
    if not (folder / "config.json").is_file():
        return NamedModel(DEMO_ID, "demo", None, aliases=(DEMO_ALIAS,))
    return NamedModel(DEMO_ID, "demo", folder, _folder_format(folder), _weight_bytes(folder),
                      (DEMO_ALIAS,))


def hf_snapshots(repo_id: str) -> list[Path]:
    """The complete-looking snapshots of a repo in the Hugging Face cache (config + weights)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    root = Path(HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not root.is_dir():
        return []
    return [s for s in sorted(root.iterdir())
            if (s / "config.json").is_file() and _weight_files(s)]


def _hf_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = hf_snapshots(repo_id)
    if not snapshots:
        return None
    ref = Path(HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "refs" / "main"
    try:
        main = ref.read_text().strip()
    except OSError:
        main = ""
    return next((s for s in snapshots if s.name == main), snapshots[-1])


def _checkpoints_in(folder: Path) -> list[Path]:
    """The folder itself when it is a checkpoint, else the checkpoints directly inside it."""
    if not folder.is_dir():
        return []
    if _is_checkpoint(folder):
        return [folder]
    return [child for child in sorted(folder.iterdir()) if _is_checkpoint(child)]


def _is_checkpoint(path: Path) -> bool:
    if path.is_file():
        return _is_gguf_model(path)
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return False
        return model_type in _HF_TYPES and bool(_weight_files(path))
    return _is_gguf_model(path)


def _is_gguf_model(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".gguf" and not path.name.lower().startswith("mmproj")
    return path.is_dir() and len(_ggufs(path)) == 1 and not (path / "config.json").is_file()


def _ggufs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if not p.name.lower().startswith("mmproj")
                  and ".unquantized." not in p.name)


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in _weight_files(folder) if p.is_file())


def gguf_file(path: Path) -> Path | None:
    """The model GGUF a listed path stands for (a .gguf, or a folder holding one), or None."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    ggufs = _ggufs(path) if path.is_dir() else []
    return ggufs[0] if ggufs else None


def _folder_format(folder: Path) -> str:
    """"safetensors bf16": the dtype that holds most of the weights, from the file headers."""
    if not (folder / "config.json").is_file() and _ggufs(folder):
        return "gguf"
    counts: Counter[str] = Counter()
    for path in sorted(folder.glob("*.safetensors")):
        try:
            tensors = safetensors_tensors(path)
        except (OSError, ValueError, struct.error):
            return "safetensors (unreadable)"
        for entry in tensors.values():
            counts[str(entry.get("dtype", "?")).lower()] += math.prod(entry.get("shape", []))
    if not counts:
        return "pytorch .bin" if any(folder.glob("*.bin")) else "?"
    return "safetensors " + counts.most_common(1)[0][0]


def human_size(size: int) -> str:
    if size <= 0:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def refuse_unknown(name: str, model_dirs: Iterable[Path] = ()) -> ModelNotFoundError:
    """The one-line error for a name nothing answers to."""
    close = close_matches(name, model_dirs)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "") + \
        "`medgem models` lists every name"
    return ModelNotFoundError(f"no model named '{name}'", hint)
