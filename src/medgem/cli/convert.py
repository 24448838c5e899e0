"""`medgem convert CHECKPOINT --quant q4_k_m`: a MedGemma checkpoint -> model.gguf + mmproj.gguf."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a MedGemma checkpoint to GGUF for the llama.cpp engine",
        description="Write model.gguf (quantized text model) and mmproj.gguf (the checkpoint's own "
                    "vision tower), then load them back and check them.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                        help="checkpoint folder, variant (4b-it) or hub id in the local cache "
                             "(with --adapter: the base, default the one the adapter records)")
    parser.add_argument("--adapter", type=Path, metavar="DIR",
                        help="convert a LoRA adapter (`medgem tune` folder or PEFT) to a GGUF LoRA "
                             "for --adapter with the llamacpp engine")
    parser.add_argument("--merge", action="store_true",
                        help="with --adapter: merge it into the base and write a model GGUF instead")
    parser.add_argument("--quant", default="q4_k_m", choices=["q4_k_m", "q8_0", "f16"],
                        help="text weights: q4_k_m (smallest, fastest; default), q8_0 or f16")
    parser.add_argument("--out", type=Path, help="output folder (default: <name>-gguf-<quant>)")
    parser.add_argument("--threads", type=int, help="quantizer threads (default: all cores)")
    parser.add_argument("--no-check", action="store_true", help="skip loading the result back")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.cli.common import llamacpp_settings
    from medgem.cli.progress import Waiting
    from medgem.engines.gguf.convert import convert_checkpoint
    from medgem.engines.llamacpp.verify import check_conversion
    from medgem.errors import InputError

    if args.adapter is not None:
        return _run_adapter(args)
    if args.merge:
        raise InputError("--merge goes with --adapter", "medgem convert --adapter DIR --merge")
    if args.checkpoint is None:
        raise InputError("name the checkpoint to convert", "medgem convert CHECKPOINT --quant q4_k_m")

    # Bars with ETA for writing and quantizing; a stage line for the steps between them.
    with Waiting(f"converting {Path(args.checkpoint).name or args.checkpoint}"):
        native = llamacpp_settings()
        verify = None if args.no_check else functools.partial(check_conversion, options=native)
        result = convert_checkpoint(args.checkpoint, args.quant, args.out, progress=True,
                                    verify=verify, threads=args.threads, llamacpp=native)
    from medgem.catalog import record_converted

    record_converted([p for p in (result.model, result.mmproj) if p])  # its name, and `medgem rm`
    if args.json:
        print(json.dumps(asdict(result) | {"seconds": round(result.seconds, 1)}, indent=2, default=str))
        return 0
    sys.stdout.write(f"model:  {result.model} ({result.model_bytes / 2**20:.1f} MiB, {result.quant})\n")
    if result.mmproj:
        sys.stdout.write(f"mmproj: {result.mmproj} ({result.mmproj_bytes / 2**20:.1f} MiB, f16)\n")
    sys.stdout.write(f"check:  {result.check}\n")
    folder = result.model.parent
    sys.stdout.write(f"run it: medgem ask --model {folder} \"your question\""
                     + (" --image IMAGE" if result.mmproj else "") + "\n")
    return 0


def _run_adapter(args: argparse.Namespace) -> int:
    from medgem.engines.gguf.lora import convert_adapter

    result = convert_adapter(args.adapter, args.out, checkpoint=args.checkpoint, merge=args.merge,
                             quant=args.quant, progress=True)
    written = {"lora": result.lora, "mmproj": result.mmproj, "model": result.model}
    if args.json:
        print(json.dumps({k: str(v) if v else None for k, v in written.items()}
                         | {"tensors": result.tensors, "seconds": round(result.seconds, 1)}, indent=2))
        return 0
    for label, path in written.items():
        if path is not None:
            sys.stdout.write(f"{label + ':':8}{path} ({path.stat().st_size / 2**20:.1f} MiB)\n")
    if result.lora is not None:
        mmproj = f" --mmproj {result.mmproj}" if result.mmproj else ""
        sys.stdout.write(f"run it: medgem ask --model BASE.gguf{mmproj} --adapter {result.lora} "
                         "\"your question\"\n")
    return 0
