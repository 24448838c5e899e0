"""`medgem models`: the MedGemma family, what each takes, and which are on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medgem.request.variants import VARIANTS, Variant


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list the MedGemma variants and local copies")
    parser.add_argument("--dir", action="append", default=[], type=Path,
                        help="also look for checkpoints in this folder (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def local_copies(variant: Variant, extra_dirs: list[Path]) -> list[tuple[str, int]]:
    """(location, bytes) of each copy: the HF cache snapshots and folders named like the repo."""
    from huggingface_hub.constants import HF_HUB_CACHE

    found: list[tuple[str, int]] = []
    repo = Path(HF_HUB_CACHE) / ("models--" + variant.hf_id.replace("/", "--")) / "snapshots"
    if repo.is_dir():
        for snapshot in sorted(repo.iterdir()):
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


def run(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        copies = local_copies(variant, args.dir)
        rows.append({
            "variant": variant.key,
            "hf_id": variant.hf_id,
            "inputs": variant.inputs,
            "kind": "it" if variant.instruction_tuned else "pt",
            "thinking": "yes (may think unprompted)" if variant.thinks_unprompted
            else ("yes" if variant.thinking else "no"),
            "params_b": variant.params_b,
            "local": [{"where": w, "bytes": b} for w, b in copies],
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'variant':<12} {'hub id':<30} {'kind':<4} {'thinking':<28} {'local copies'}")
    for row in rows:
        local = ", ".join(f"{c['where']} ({c['bytes'] / 1e9:.1f} GB)" for c in row["local"]) or "-"
        print(f"{row['variant']:<12} {row['hf_id']:<30} {row['kind']:<4} {row['thinking']:<28} {local}")
        print(f"{'':<12} inputs: {row['inputs']}")
    print("\nAll are gated: accept the Health AI Developer Foundations terms on the model page and "
          "set HF_TOKEN to download. `medgem demo` runs without any of them.")
    return 0
