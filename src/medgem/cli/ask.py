"""`medgem ask QUESTION [--image ...]`: one question, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from medgem.cli.common import (
    add_audit_flags,
    add_generation_flags,
    add_limit_flags,
    add_model_flags,
    add_slide_flags,
    generation_options,
    imaging_from_args,
    load_model,
    print_label_first,
    render,
)
from medgem.inputs import Inputs, read_inputs
from medgem.request import GenerationOptions


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ask", help="ask a question, optionally about images, DICOM files or a CT/MR series",
        description="Ask MedGemma a question. Use '-' to read the question from stdin.",
    )
    parser.add_argument("question", help="the question ('-' reads stdin)")
    add_image_flags(parser)
    add_model_flags(parser)
    add_server_flag(parser)
    add_audit_flags(parser)
    add_generation_flags(parser)
    parser.set_defaults(func=run)


def add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-server", action="store_true",
                        help="load the model here even when a `medgem serve` of it is running "
                        "(by default the question goes to that server)")


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images")
    group.add_argument(
        "--image", "-i", action="append", default=[], type=Path,
        help="image, DICOM file, DICOM folder or .zip, NIfTI; repeat for several (ordered by study date)",
    )
    group.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                       help="write the images exactly as the model gets them (PNG per image/slice)")
    group.add_argument("--boxes", type=Path, metavar="PNG",
                       help="draw box_2d localizations from the answer on the image")
    add_slide_flags(parser)
    add_limit_flags(parser)


def run(args: argparse.Namespace, question: str | None = None, inputs: Inputs | None = None) -> int:
    """Answer the question; ``inputs`` are the --image files when the caller already read them
    (describe), so each file is read once per command."""
    text = question if question is not None else _question(args.question)
    if inputs is None:
        inputs = read_inputs(args.image, imaging_from_args(args))  # before the model loads
    options = generation_options(args)  # a bad --json-schema is refused before any load
    check_before_load(args, text, options)
    if args.save_preprocessed:
        _save_preprocessed(inputs, args.save_preprocessed)
    model = from_running_server(args) or load_model(args)
    if args.boxes and options.constraint is None and model.engine.capabilities.constrained:
        from medgem.structured.builtin import BOXES

        options = replace(options, constraint=BOXES)  # boxes as JSON, not read back by a regex
    request = model.request(text, images=inputs, system=args.system, options=options)
    if not args.json:
        print_label_first(model)
    answer = render(model.generate(request), as_json=args.json, show_thinking=args.show_thinking)
    if args.boxes:
        _draw_boxes(answer.text, inputs, args.boxes)
    return 1 if answer.structured_error else 0


def check_before_load(args: argparse.Namespace, text: str,
                      options: GenerationOptions | None = None) -> None:
    """What the flags and the checkpoint's own files can refuse, refused before any weight loads:
    an empty question, images for a text-only model, --think for a variant that cannot think,
    a schema for the pipeline path (it cannot constrain). A model medgem cannot resolve here
    (remote, not downloaded) is left to the load to report."""
    from medgem.errors import MedgemError, UnsupportedInputError
    from medgem.request.compose import check_question, check_think
    from medgem.resolve import resolve_checkpoint

    check_question(text)
    if options is not None and options.constraint is not None and args.engine in ("hf-pipeline", "pipeline"):
        raise UnsupportedInputError("the hf-pipeline engine cannot constrain its answer to a JSON schema",
                                    "use --engine hf or llamacpp, or drop --json-schema / --format")
    if args.engine == "remote" or args.backend or args.base_url or args.model is None:
        return
    try:
        checkpoint = resolve_checkpoint(args.model, variant=args.variant, mmproj=args.mmproj,
                                        revision=args.revision)
    except MedgemError:
        return
    if args.image and not checkpoint.multimodal:
        raise UnsupportedInputError(
            f"'{checkpoint.model_id}' is a text-only model and cannot read images",
            "drop --image, or use an image model such as google/medgemma-4b-it")
    check_think(checkpoint.variant, args.think)


def from_running_server(args: argparse.Namespace) -> Any:
    """The model through a running `medgem serve` of the same checkpoint, or None.

    Only when nothing asks for a load of its own: no remote flags, no engine settings the
    server may not share (dtype, quantization, context, threads, vision path).
    """
    import os

    from medgem.cli.running import find_server, identity
    from medgem.errors import MedgemError
    from medgem.resolve import resolve_checkpoint

    own_load = (args.quantize, args.n_ctx, args.threads, args.vision, args.base_url)
    if (args.no_server or args.backend or any(v is not None for v in own_load)
            or args.engine == "remote" or args.dtype != "auto" or args.device != "auto"):
        return None
    try:
        checkpoint = resolve_checkpoint(args.model, variant=args.variant, mmproj=args.mmproj,
                                        revision=args.revision)
    except MedgemError:
        return None  # the load reports it, as without a server
    server = find_server(identity(checkpoint.path, checkpoint.revision, args.adapter),
                         engine=args.engine,
                         have_key=bool(args.api_key or os.environ.get("MEDGEM_API_KEY")))
    if server is None:
        return None
    sys.stderr.write(f"medgem: using the running server at {server.url} (pid {server.pid})\n")
    remote = argparse.Namespace(**vars(args))
    remote.engine, remote.base_url, remote.model = "remote", server.url, server.served_name
    remote.variant = args.variant or server.variant
    remote.adapter = None  # the server applies its own
    return load_model(remote)


def _question(raw: str) -> str:
    return sys.stdin.read() if raw == "-" else raw


def _save_preprocessed(inputs: Inputs, folder: Path) -> None:
    """The images as the model gets them, named as `medgem inspect --save-preprocessed` names
    them (``01_chest.png``, ``01_ct_slice_001.png``), written before the model loads."""
    from medgem.inputs.preview import save_preprocessed

    written = save_preprocessed(inputs.items, folder)
    print(f"medgem: wrote {len(written)} preprocessed image(s) to {folder}", file=sys.stderr)


def _draw_boxes(answer: str, inputs: Inputs, target: Path) -> None:
    from medgem.errors import InputError

    if len(inputs.items) != 1:
        raise InputError("--boxes needs exactly one --image")
    from medgem.answer.boxes import draw_boxes, parse_boxes

    image = inputs.images[0]
    boxes = parse_boxes(answer, image.size)
    draw_boxes(image, boxes, target)
    print(f"medgem: drew {len(boxes)} box(es) on {target}", file=sys.stderr)
