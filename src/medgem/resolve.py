"""Where the weights come from: a local folder or file, the Hugging Face cache, or the hub.

Resolution never guesses from file names alone: an HF checkpoint is recognised by its config
(Gemma 3 model types), a GGUF by its extension and header (checked by the llama.cpp engine).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from medgem.errors import GatedModelError, ModelNotFoundError, NotACheckpointError
from medgem.request.variants import Variant, find_variant

MULTIMODAL_TYPES = {"gemma3"}
TEXT_TYPES = {"gemma3_text"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model on local disk.

    Attributes:
        path: the checkpoint folder (HF) or the .gguf file.
        format: "hf" or "gguf".
        model_id: hub id when known, else the folder or file name.
        revision: the snapshot commit (HF cache) or a digest of the local files.
        multimodal: takes images (vision tower present, or an mmproj for GGUF).
        chat_template: the checkpoint ships its own chat template.
        variant: the recognised MedGemma variant, None for other Gemma 3 checkpoints.
        mmproj: the GGUF vision projector, when there is one.
        weight_bytes: bytes of weight files on disk.
        demo: a demo or test checkpoint (medgem_demo in its config).
    """

    path: Path
    format: Literal["hf", "gguf"]
    model_id: str
    revision: str | None
    multimodal: bool
    chat_template: bool
    variant: Variant | None
    mmproj: Path | None = None
    weight_bytes: int = 0
    demo: bool = False

    @property
    def instruction_tuned(self) -> bool:
        if self.variant is not None:
            return self.variant.instruction_tuned
        return self.chat_template


def resolve_checkpoint(spec: str | os.PathLike[str], *, variant: str | None = None,
                       mmproj: str | os.PathLike[str] | None = None, revision: str | None = None,
                       token: str | None = None, offline: bool | None = None,
                       cache_dir: str | None = None,
                       model_dirs: Sequence[Path] | None = None) -> Checkpoint:
    """Find a checkpoint: a local path, a name `medgem models` lists, a variant key ("4b-it"),
    or a hub id.

    Args:
        spec: a folder, a .gguf file, the demo model ("demo"), a converted GGUF's or a local
            checkpoint's name, a variant key or alias, or a Hugging Face id.
        variant: force the variant (for fine-tunes whose origin cannot be read from the files).
        mmproj: the GGUF vision projector, when not next to the model.
        revision: hub revision (branch, tag or commit).
        token: hub token; defaults to HF_TOKEN.
        offline: never contact the hub; defaults to HF_HUB_OFFLINE.
        cache_dir: the Hugging Face cache; defaults to HF_HOME / HF_HUB_CACHE.
        model_dirs: folders of local checkpoints searched by name; defaults to the user's
            settings (MEDGEM_MODEL_DIRS or the config file).

    Raises:
        ModelNotFoundError: nothing at that path, or not cached and downloads are off.
        NotACheckpointError: the path holds something that is not a Gemma 3 checkpoint.
        GatedModelError: the hub answered 401/403.
    """
    forced = _forced_variant(variant)
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return _local(path, forced, mmproj)
    if _looks_like_path(text):
        raise ModelNotFoundError(
            f"no model at '{text}'", "check the path, or pass a hub id such as google/medgemma-4b-it"
        )
    known = find_variant(text)
    if known is None:
        named = _named(text, model_dirs)
        if named is not None:
            return _local(named, forced, mmproj)
    repo_id = known.hf_id if known else text
    if not HUB_ID.match(repo_id):
        from medgem.catalog import refuse_unknown

        raise refuse_unknown(text, _dirs(model_dirs))
    folder = _from_hub(repo_id, revision, token, offline, cache_dir)
    checkpoint = _local(folder, forced or known, mmproj)
    return replace(checkpoint, model_id=repo_id, revision=folder.name)


def _dirs(model_dirs: Sequence[Path] | None) -> Sequence[Path]:
    if model_dirs is not None:
        return model_dirs
    from medgem.config import load_settings

    return load_settings().model_dirs


def _named(name: str, model_dirs: Sequence[Path] | None) -> Path | None:
    """The folder or file of the demo model, a converted GGUF or a local checkpoint by name;
    the demo model is built on first use (from an installed package, no download)."""
    from medgem.catalog import find_named

    found = find_named(name, _dirs(model_dirs))
    if found is None:
        return None
    if found.kind == "demo":
        from medgem.demo.build import demo_checkpoint

        return demo_checkpoint()
    assert found.path is not None
    return found.path


def _forced_variant(name: str | None) -> Variant | None:
    if name is None:
        return None
    found = find_variant(name)
    if found is None:
        raise ModelNotFoundError(f"unknown variant '{name}'", "run `medgem models` for the names")
    return found


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", ".", "~"))
        or text.endswith(".gguf")
        or (("/" in text or os.sep in text) and not HUB_ID.match(text))
    )


def _local(path: Path, variant: Variant | None, mmproj: str | os.PathLike[str] | None) -> Checkpoint:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf(path, variant, Path(mmproj) if mmproj else None)
        raise NotACheckpointError(
            f"'{path}' is a file but not a .gguf model",
            "pass a checkpoint folder (config.json + *.safetensors) or a .gguf file",
        )
    if (path / "config.json").is_file():
        return _hf_folder(path, variant)
    ggufs = sorted(p for p in path.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
    if len(ggufs) == 1:
        return _gguf(ggufs[0], variant, Path(mmproj) if mmproj else None)
    raise NotACheckpointError(
        f"'{path}' holds no model: no config.json and {'several' if ggufs else 'no'} .gguf files",
        "pass a Hugging Face checkpoint folder, or a single .gguf (with --mmproj for images)",
    )


def _hf_folder(path: Path, variant: Variant | None) -> Checkpoint:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotACheckpointError(
            f"'{path / 'config.json'}' is not readable JSON ({exc})", "re-download the checkpoint"
        ) from exc
    model_type = config.get("model_type", "")
    if model_type not in MULTIMODAL_TYPES | TEXT_TYPES:
        raise NotACheckpointError(
            f"'{path}' holds a '{model_type or 'unknown'}' model, not MedGemma / Gemma 3",
            "medgem runs MedGemma and other Gemma 3 checkpoints",
        )
    weights = [p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise NotACheckpointError(
            f"'{path}' has a config but no weight files (*.safetensors)",
            "the download may be incomplete: download it again",
        )
    demo_meta = config.get("medgem_demo") or {}
    return Checkpoint(
        path=path, format="hf", model_id=str(demo_meta.get("id") or path.name),
        revision=_local_revision(path, weights), multimodal=model_type in MULTIMODAL_TYPES,
        chat_template=checkpoint_chat_template(path) is not None,
        variant=variant or _variant_from_card(path),
        weight_bytes=sum(p.stat().st_size for p in weights), demo=bool(demo_meta),
    )


def _gguf(path: Path, variant: Variant | None, mmproj: Path | None) -> Checkpoint:
    if mmproj is None:
        siblings = sorted(path.parent.glob("mmproj*.gguf"))
        mmproj = siblings[0] if len(siblings) == 1 else None
    elif not mmproj.is_file():
        raise ModelNotFoundError(f"no mmproj file at '{mmproj}'", "check the --mmproj path")
    return Checkpoint(
        path=path, format="gguf", model_id=path.stem, revision=_file_digest(path),
        multimodal=mmproj is not None,
        chat_template=False,  # read from the GGUF by the llama.cpp engine
        variant=variant, mmproj=mmproj,
        weight_bytes=path.stat().st_size + (mmproj.stat().st_size if mmproj else 0),
    )


def checkpoint_chat_template(path: Path) -> str | None:
    """The chat template a checkpoint folder ships: ``chat_template.jinja``, else the
    ``chat_template`` of ``chat_template.json`` or ``tokenizer_config.json``; None without one."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            value = json.loads((path / name).read_text()).get("chat_template")
        except (OSError, ValueError):
            continue
        if isinstance(value, list):  # the named form: [{"name": "default", "template": ...}, ...]
            value = next((t.get("template") for t in value
                          if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(value, str) and value:
            return value
    return None


def _variant_from_card(path: Path) -> Variant | None:
    """A fine-tune's model card names its base model (``base_model:`` in the front matter)."""
    card = path / "README.md"
    if not card.is_file():
        return None
    for line in card.read_text(errors="replace").splitlines()[:60]:
        match = re.match(r"^\s*(?:-\s*)?(?:base_model:\s*)?(google/medgemma-[\w.-]+)\s*$", line)
        if match:
            return find_variant(match.group(1))
    return None


def _local_revision(path: Path, weights: list[Path]) -> str:
    """A digest of the config and the weight files' names and sizes: cheap, stable, changes
    when the files do. Hub snapshots use their commit hash instead."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weight in sorted(weights):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return "local-" + digest.hexdigest()[:12]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    return "local-" + digest.hexdigest()[:12]


ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "README.md"]


def _from_hub(repo_id: str, revision: str | None, token: str | None, offline: bool | None,
              cache_dir: str | None) -> Path:
    """The snapshot folder from the local cache, or downloaded when allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                      local_files_only=True, allow_patterns=ALLOW_PATTERNS))
    except OSError:  # not cached (LocalEntryNotFoundError is an OSError)
        pass
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        raise ModelNotFoundError(
            f"'{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
            "download it once with network access (HF_TOKEN set), or pass a local folder",
        )
    token = token or os.environ.get("HF_TOKEN")
    gated_hint = (
        f"accept the Health AI Developer Foundations terms on https://huggingface.co/{repo_id} "
        "and set HF_TOKEN to a read token of that account"
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=ALLOW_PATTERNS))
    except GatedRepoError as exc:
        raise GatedModelError(f"'{repo_id}' is gated and this account has no access", gated_hint) from exc
    except RepositoryNotFoundError as exc:
        if not token:
            raise GatedModelError(f"the hub refused '{repo_id}' without a token", gated_hint) from exc
        raise ModelNotFoundError(f"no repository '{repo_id}' on the hub", "check the id") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise GatedModelError(f"the hub refused '{repo_id}' ({status})", gated_hint) from exc
        raise ModelNotFoundError(f"download of '{repo_id}' failed: {exc}", "retry later") from exc
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"'{repo_id}' is not cached and could not be downloaded ({type(exc).__name__})",
            "check the network and HF_TOKEN, or pass a local folder",
        ) from exc
