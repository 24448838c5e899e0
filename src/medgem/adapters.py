"""LoRA adapters: where they are, whether they are finished, and which exact weights they hold.

`medgem tune` writes an adapter folder (PEFT's ``adapter_config.json`` and
``adapter_model.safetensors``) under a temporary name, adds ``medgem-adapter.json`` (the content
hash of every file, the base model, the training settings) and only then renames it into place.
So a folder without that file is either an interrupted run (refused) or a PEFT adapter trained
elsewhere (accepted, hashed when loaded). Every answer from an adapted model carries the
adapter's name and hash, so it can be traced to the exact weights that produced it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.errors import AdapterError, require

MARKER = "medgem-adapter.json"
PEFT_CONFIG = "adapter_config.json"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdapterInfo:
    """A finished adapter folder.

    Attributes:
        path: the folder holding adapter_config.json.
        name: its name (the training run's, else the folder's).
        sha256: digest over the names and contents of its files (the marker excluded).
        base_model: the base model it was trained on, as recorded.
        config: PEFT's adapter_config.json.
        marker: medgem's record of the training run ({} for adapters trained elsewhere).
    """

    path: Path
    name: str
    sha256: str
    base_model: str | None
    config: dict[str, Any]
    marker: dict[str, Any]

    @property
    def modules_to_save(self) -> tuple[str, ...]:
        """Whole modules the adapter replaces (the notebook's lm_head and embed_tokens)."""
        return tuple(self.config.get("modules_to_save") or ())

    @property
    def label(self) -> str:
        """"name@sha256[:12]" for one-line displays."""
        return f"{self.name}@{self.sha256[:12]}"


def content_digest(folder: Path) -> str:
    """sha256 over each file's name and sha256, in name order; the marker is left out."""
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER):
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def write_marker(folder: Path, name: str, record: dict[str, Any]) -> str:
    """Seal a finished adapter folder: its digest, name and training record. Returns the digest."""
    digest = content_digest(folder)
    body = {"format": FORMAT_VERSION, "name": name, "sha256": digest, **record}
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(folder / MARKER)
    return digest


def find_adapter(spec: str | Path, *, verify: bool = True) -> AdapterInfo:
    """Resolve an adapter folder: a `medgem tune --out` folder, its ``adapter`` folder, or any
    PEFT adapter folder.

    Args:
        spec: the folder.
        verify: recompute the content digest and compare it with the recorded one.

    Raises:
        AdapterError: no adapter there, an interrupted run, or files changed since training.
    """
    path = Path(spec).expanduser()
    if (path / "adapter" / PEFT_CONFIG).is_file():
        path = path / "adapter"
    if not (path / PEFT_CONFIG).is_file():
        if (path / "checkpoints").is_dir() or path.with_name(path.name + PARTIAL_SUFFIX).exists():
            raise AdapterError(f"'{spec}' holds an unfinished training run, not an adapter",
                               "resume it with the same `medgem tune` command and --resume")
        raise AdapterError(f"no adapter at '{spec}' (no {PEFT_CONFIG})",
                           "give the --out folder of `medgem tune`, or a PEFT adapter folder")
    if path.name.endswith(PARTIAL_SUFFIX) or path.name.startswith("checkpoint-"):
        raise AdapterError(f"'{path}' is an intermediate checkpoint of a training run",
                           "use the finished adapter (the run's --out folder) or resume the run")
    try:
        config = json.loads((path / PEFT_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"'{path / PEFT_CONFIG}' is not valid JSON") from exc
    marker: dict[str, Any] = {}
    if (path / MARKER).is_file():
        marker = json.loads((path / MARKER).read_text())
    digest = content_digest(path) if verify or not marker else str(marker["sha256"])
    if marker and digest != marker.get("sha256"):
        raise AdapterError(
            f"the adapter files in '{path}' changed after training (hash {digest[:12]}, "
            f"recorded {str(marker.get('sha256'))[:12]})",
            "restore them, or train the adapter again",
        )
    name = str(marker.get("name") or (path.parent.name if path.name == "adapter" else path.name))
    base = marker.get("base_model", {}).get("id") if marker else config.get("base_model_name_or_path")
    return AdapterInfo(path, name, digest, base, config, marker)


def attach_adapter(model: Any, adapter: AdapterInfo, *, trainable: bool = False) -> Any:
    """Wrap a loaded transformers model with the adapter (PEFT), ready to generate.

    Raises:
        MissingDependencyError: peft is not installed.
        AdapterError: the adapter does not fit the model (trained on another architecture).
    """
    peft: Any = require("peft", "tune", "--adapter")
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter.path), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise AdapterError(
            f"the adapter '{adapter.name}' does not fit this model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})",
            f"use the base model it was trained on ({adapter.base_model or 'see its adapter_config.json'})",
        ) from exc
    return wrapped if trainable else wrapped.eval()


def save_merged(adapter: AdapterInfo, base: Path, multimodal: bool, out: Path,
                dtype: Any = "auto") -> None:
    """Write the ``base`` checkpoint with ``adapter`` merged into its weights (loaded in
    ``dtype``) as the checkpoint folder ``out``, with its processor, chat template and
    generation config; its config.json names the adapter it holds (and so does a GGUF from it).
    """
    import transformers

    model_class: Any = (transformers.AutoModelForImageTextToText if multimodal
                        else transformers.AutoModelForCausalLM)
    processor_class: Any = transformers.AutoProcessor if multimodal else transformers.AutoTokenizer
    model = model_class.from_pretrained(str(base), dtype=dtype)
    attach_adapter(model, adapter).merge_and_unload().save_pretrained(str(out))
    processor_class.from_pretrained(str(base)).save_pretrained(str(out))
    for name in ("chat_template.jinja", "generation_config.json"):
        if (base / name).is_file() and not (out / name).exists():
            shutil.copy2(base / name, out / name)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["medgem_adapter"] = {"name": adapter.name, "sha256": adapter.sha256}
    config_path.write_text(json.dumps(config, indent=2) + "\n")
