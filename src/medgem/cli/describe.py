"""`medgem describe IMAGE`: a modality-appropriate question with the radiologist system prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medgem.cli import ask
from medgem.errors import InputError
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
    ask.add_question_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the image (and any --image priors) once, pick the question for its modality and ask."""
    from medgem.cli.common import imaging_from_args, require_model
    from medgem.inputs import read_inputs

    require_model(args, "describe")
    if args.study:
        raise InputError("describe takes a local file; a study on a PACS goes through ask",
                         'use medgem ask "Describe this study" --study REF')
    args.image = [args.target, *args.image]  # --image adds priors for a comparison
    inputs = read_inputs(args.image, imaging_from_args(args))
    target = [item for item in inputs.items if item.source == args.target.name] or inputs.items
    modality = inputs.volume_modality or next((m.modality for m in target if m.modality), None)
    if args.system is None and inputs.layout != "volume":
        args.system = RADIOLOGIST_SYSTEM
    return ask.run(args, question=args.prompt or describe_prompt(modality), inputs=inputs)
