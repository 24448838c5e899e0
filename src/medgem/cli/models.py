"""`medgem models`: every model medgem can run by name, and the MedGemma family."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medgem.errors import InputError
from medgem.request.variants import VARIANTS, Variant


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models --model accepts by name, and where they are",
        description="List the MedGemma variants (and whether they are downloaded), the demo "
        "model, GGUFs made by `medgem convert`, models fetched by `medgem pull`, and local "
        "checkpoints in the model folders (--dir, $MEDGEM_MODEL_DIRS, the config file).")
    parser.add_argument("--dir", action="append", default=[], type=Path,
                        help="also look for checkpoints in this folder (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of models")
    parser.set_defaults(func=run)


def local_copies(variant: Variant, extra_dirs: list[Path]) -> list[tuple[str, int]]:
    """(location, bytes) of each copy: the HF cache snapshots and folders named like the repo."""
    from medgem.catalog import hf_snapshots

    found: list[tuple[str, int]] = []
    for snapshot in hf_snapshots(variant.hf_id):
        if size := _size(snapshot):
            found.append((f"HF cache {snapshot.name[:12]}", size))
    name = variant.hf_id.split("/")[1]
    for folder in extra_dirs:
        for candidate in (folder / name, folder):
            if (candidate / "config.json").is_file() and candidate.name == name:
                found.append((str(candidate), _size(candidate)))
    return found


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _thinking(variant: Variant) -> str:
    if variant.thinks_unprompted:
        return "yes (may think unprompted)"
    return "yes" if variant.thinking else "no"


def _format(listed: str, path: Path | None) -> str | None:
    """The catalog's format, with a GGUF's quantization read from its header."""
    from medgem.catalog import gguf_file
    from medgem.engines.gguf.read import file_type_name, read_header
    from medgem.errors import MedgemError

    model = gguf_file(path) if listed == "gguf" and path is not None else None
    if model is None:
        return listed or None
    try:
        code = read_header(model).get("general.file_type")
    except MedgemError:
        return "gguf (unreadable)"
    return f"gguf {file_type_name(int(code))}" if code is not None else "gguf"


def run(args: argparse.Namespace) -> int:
    from medgem.catalog import human_size, list_models
    from medgem.config import load_settings

    for folder in args.dir:  # a typo would list the table without them, and no word
        if not folder.expanduser().is_dir():
            raise InputError(f"--dir {folder} is not a folder",
                             "give the folder that holds your checkpoint folders or .gguf files")
    dirs = [*args.dir, *load_settings().model_dirs]
    variants = {v.key: v for v in VARIANTS}
    rows: list[dict[str, Any]] = []
    for model in list_models(dirs):
        row: dict[str, Any] = {
            "name": model.name, "source": model.kind, "aliases": list(model.aliases),
            "downloaded": model.here, "path": str(model.path) if model.path else None,
            "format": _format(model.format, model.path), "size_bytes": model.size_bytes,
        }
        variant = variants.get(model.name) if model.kind == "variant" else None
        if variant is not None:
            row |= {
                "variant": variant.key, "hf_id": variant.hf_id, "inputs": variant.inputs,
                "kind": "it" if variant.instruction_tuned else "pt",
                "thinking": _thinking(variant), "params_b": variant.params_b,
                "local": [{"where": w, "bytes": b} for w, b in local_copies(variant, args.dir)],
            }
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<27} {'SOURCE':<9} {'FORMAT':<18} {'SIZE':>8}  WHERE")
    for row in rows:
        where = row["path"] or (f"not downloaded: medgem pull {row['name']}"
                                if row["source"] == "variant" else "built on first use")
        print(f"{row['name']:<27} {row['source']:<9} {row['format'] or '-':<18} "
              f"{human_size(row['size_bytes']):>8}  {where}")
    print(f"\n{'variant':<12} {'hub id':<30} {'kind':<4} {'thinking':<27} inputs")
    for variant in VARIANTS:
        print(f"{variant.key:<12} {variant.hf_id:<30} "
              f"{'it' if variant.instruction_tuned else 'pt':<4} {_thinking(variant):<27} "
              f"{variant.inputs}")
    print("\nThe variants are gated: accept the Health AI Developer Foundations terms on the model "
          "page and set HF_TOKEN, then `medgem pull NAME`. `--model demo` runs without any of them.")
    return 0
