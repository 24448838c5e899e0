"""`medgem describe IMAGE`: a modality-appropriate question with the radiologist system prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medgem.cli import ask
from medgem.cli.common import add_audit_flags, add_generation_flags, add_model_flags
from medgem.request.compose import RADIOLOGIST_SYSTEM, describe_prompt


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "describe", help="describe a medical image, DICOM file or CT/MR series",
        description="Describe an image as an expert radiologist would (the official example).",
    )
    parser.add_argument("target", type=Path, metavar="IMAGE",
                        help="image, DICOM file/folder/zip or NIfTI")
    parser.add_argument("--prompt", help="override the default question for the modality")
    ask.add_image_flags(parser)
    add_model_flags(parser)
    ask.add_server_flag(parser)
    add_audit_flags(parser)
    add_generation_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.cli.common import limit_options
    from medgem.inputs import ImagingOptions, read_images

    loaded = read_images([args.target], ImagingOptions(max_patches=1, max_pages=args.max_pages,
                                                       **limit_options(args)))  # type: ignore[arg-type]
    modality = loaded.volume_modality or next((m for m in loaded.modalities if m), None)
    args.image = [args.target, *args.image]  # --image adds priors for a comparison
    if args.system is None and loaded.volume_modality is None:
        args.system = RADIOLOGIST_SYSTEM
    return ask.run(args, question=args.prompt or describe_prompt(modality))
