"""`medgem ask QUESTION [--image ...]`: one question, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from medgem.cli.clinic import add_fhir_flags, add_study_flags, patient_context, read_command_inputs
from medgem.cli.common import (
    add_audit_flags,
    add_generation_flags,
    add_limit_flags,
    add_model_flags,
    add_slide_flags,
    audit_store,
    generation_options,
    load_model,
    require_model,
)
from medgem.cli.terminal import print_label_first, show_answer
from medgem.errors import InputError, MedgemError, UnsupportedInputError
from medgem.inputs import Inputs
from medgem.request import GenerationOptions
from medgem.resolve import Checkpoint, resolve_checkpoint


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ask", help="ask a question, optionally about images, DICOM files or a CT/MR series",
        description="Ask MedGemma a question. Use '-' to read the question from stdin.",
    )
    parser.add_argument("question", help="the question ('-' reads stdin)")
    add_image_flags(parser)
    add_question_flags(parser)
    parser.set_defaults(func=run)


def add_question_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that asks a model (ask, describe, chat): the model, where it
    runs (here or on a running server), the audit, and how to generate."""
    add_model_flags(parser, model_required=False)  # --server names none
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-server", action="store_true",
                       help="load the model here even when a `medgem serve` of it is running "
                       "(by default the question goes to your server of the same model that "
                       "writes to the same audit store; see `medgem ps`)")
    group.add_argument("--server", metavar="URL",
                       help="send the question to this medgem server (e.g. http://127.0.0.1:8000); "
                       "it writes the audit record")
    add_audit_flags(parser)
    add_generation_flags(parser)


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
    group.add_argument("--send-back", action="store_true",
                       help="store the answer on the --study's PACS as a DICOM SR (STOW-RS or "
                            "C-STORE) referencing the images it saw, boxes as coordinates (an answer "
                            "reviewed later: `medgem audit send-back ID --study REF`)")
    group.add_argument("--send-back-unreviewed", action="store_true",
                       help="allow --send-back for an answer no clinician reviewed yet (it goes "
                            "as a preliminary, unverified report)")
    add_slide_flags(parser)
    add_limit_flags(parser)
    add_study_flags(parser)
    add_fhir_flags(parser)


def run(args: argparse.Namespace, question: str | None = None, inputs: Inputs | None = None) -> int:
    """Answer the question; ``inputs`` are the --image files when the caller already read them
    (describe), so each file is read once per command."""
    require_model(args, getattr(args, "command", None) or "ask")
    text = question
    if text is None:
        text = sys.stdin.read() if args.question == "-" else args.question
    if getattr(args, "send_back", False):  # refused before anything is fetched or generated
        from medgem.sendback import check_send_back

        check_send_back(studies=len(getattr(args, "study", []) or []), reviewed=False,
                        allow_unreviewed=args.send_back_unreviewed)
    if inputs is None:
        inputs = read_command_inputs(args, text)  # before the model loads
    if args.boxes and len(inputs.items) != 1:  # drawn after the answer: refused before it
        raise InputError("--boxes needs exactly one --image", "give the one image to draw the boxes on")
    if args.boxes:
        _check_writable(args.boxes)
    options = generation_options(args)  # a bad value or --json-schema is refused before any load
    check_before_load(args, text, options)
    context = patient_context(args, text)
    if context is not None:
        text = context.prompt(text)  # type: ignore[attr-defined]
    if args.save_preprocessed:
        _save_preprocessed(inputs, args.save_preprocessed)
    model = from_running_server(args)
    if model is None:
        size_context(args, text, inputs, options)
        model = load_model(args)
    if args.boxes and options.constraint is None and model.engine.capabilities.constrained:
        from medgem.structured.builtin import BOXES

        options = replace(options, constraint=BOXES)  # boxes as JSON, not read back by a regex
    request = model.request(text, images=inputs, system=args.system, options=options)
    if not args.json:
        print_label_first(model)
    answer = show_answer(model, request, as_json=args.json, show_thinking=args.show_thinking)
    if answer is None:  # Ctrl-C: the caveat and a record of what was said, then out
        return 130
    if context is not None:
        _cite(args, context, answer.audit_id)
    if inputs.studies:
        _record_sources(args, answer.audit_id, inputs)
    if getattr(args, "send_back", False):
        _send_back(args, answer, inputs)
    if args.boxes:
        _draw_boxes(answer.text, inputs, args.boxes)
    return 1 if answer.structured_error else 0


def check_before_load(args: argparse.Namespace, text: str, options: GenerationOptions) -> None:
    """What the flags and the checkpoint's own files can refuse, refused before any weight loads:
    an empty question, images for a text-only model, --think for a variant that cannot think,
    a schema for the pipeline path (it cannot constrain). A model medgem cannot resolve here
    (remote, not downloaded) is left to the load to report."""
    from medgem.request.compose import check_question, check_think

    check_question(text)
    if options.constraint is not None and args.engine in ("hf-pipeline", "pipeline"):
        raise UnsupportedInputError("the hf-pipeline engine cannot constrain its answer to a JSON schema",
                                    "use --engine hf or llamacpp, or drop --json-schema / --format")
    if args.engine == "remote" or args.backend or args.base_url or args.model is None:
        return
    checkpoint = _local_checkpoint(args)
    if checkpoint is None:
        return
    if (args.image or getattr(args, "study", None)) and not checkpoint.multimodal:
        raise UnsupportedInputError(
            f"'{checkpoint.model_id}' is a text-only model and cannot read images",
            "drop --image, or use an image model such as google/medgemma-4b-it")
    check_think(checkpoint.variant, args.think)


def size_context(args: argparse.Namespace, text: str, inputs: Inputs, options: GenerationOptions) -> None:
    """Under llama.cpp with no --n-ctx, a context that holds this question: llama.cpp allocates
    8,192 tokens by default, and a CT volume of 85 slices takes ~22,500 (256 soft tokens a
    slice). A one-shot load knows its question, so it sizes the context to it (the model's own
    window at most) and says so, rather than refusing the volume."""
    from medgem.engines import ALIASES

    engine = ALIASES.get(args.engine, args.engine)
    if args.n_ctx is not None or len(inputs.images) < 2 or engine not in ("auto", "llamacpp"):
        return
    checkpoint = _local_checkpoint(args)
    if checkpoint is None or checkpoint.format != "gguf" or checkpoint.mmproj is None:
        return
    from medgem.engines.llamacpp.engine import DEFAULT_N_CTX
    from medgem.engines.llamacpp.speeds import context_need, text_tokens
    from medgem.request.variants import default_budget

    images = len(inputs.images)
    budget = options.max_new_tokens or default_budget("volume", bool(options.think))
    need = context_need(checkpoint.path, checkpoint.mmproj, images,
                        text_tokens(text + (args.system or ""), markers=images), budget)
    if need.with_answer <= DEFAULT_N_CTX:
        return
    args.n_ctx = need.n_ctx
    sys.stderr.write(f"medgem: {images} images need about {need.with_answer:,} tokens with the answer: "
                     f"llama.cpp's context is {args.n_ctx:,} for this question, not {DEFAULT_N_CTX:,} "
                     "(--n-ctx sets it)\n")


def _local_checkpoint(args: argparse.Namespace) -> Checkpoint | None:
    """The checkpoint --model names, resolved without the network; None when it cannot be
    (remote, not downloaded): the load reports that, as without these early checks."""
    try:
        return resolve_checkpoint(args.model, variant=args.variant, mmproj=args.mmproj,
                                  revision=args.revision, offline=True)
    except MedgemError:
        return None


def from_running_server(args: argparse.Namespace) -> Any:
    """The model through a running `medgem serve` (``--server URL``, or this user's server of
    the same checkpoint writing to the same audit store), or None to load it here.

    The server writes each answer's audit record, so nothing is recorded here as well (one
    record per question). A server is found only when nothing asks for a load of its own: no
    remote flags, no engine settings the server may not share (dtype, quantization, context,
    threads, vision path), and the audit on.
    """
    import os

    from medgem.cli.running import find_server, identity, store_location

    if getattr(args, "server", None):
        return _through_server(args, args.server.rstrip("/"), f"medgem: using the server at "
                               f"{args.server} (it writes the audit record)")
    own_load = (args.quantize, args.n_ctx, args.threads, args.vision, args.base_url)
    if (args.no_server or args.backend or any(v is not None for v in own_load) or args.no_audit
            or args.engine == "remote" or args.dtype != "auto" or args.device != "auto"):
        return None
    checkpoint = _local_checkpoint(args)
    if checkpoint is None:
        return None
    store = store_location(args.audit_db)
    server = find_server(identity(checkpoint.path, checkpoint.revision, args.adapter),
                         engine=args.engine, audit=store,
                         have_key=bool(args.api_key or os.environ.get("MEDGEM_API_KEY")))
    if server is None:
        return None
    return _through_server(
        args, server.url, f"medgem: using your running server at {server.url} (pid {server.pid}, "
        f"audit {store}); --no-server loads the model here", served=server.served_name,
        variant=server.variant)


def _through_server(args: argparse.Namespace, url: str, line: str, *, served: str | None = None,
                    variant: str | None = None) -> Any:
    """The remote engine on a medgem server, its answers recorded by that server only."""
    remote = argparse.Namespace(**vars(args))
    remote.engine, remote.base_url, remote.backend = "remote", url, []
    remote.model = served or _served_name(url, args.api_key)
    remote.variant = args.variant or variant
    remote.adapter = None  # the server applies its own
    remote.no_audit = False
    sys.stderr.write(line + "\n")
    return load_model(remote, audit=False)


def _served_name(url: str, api_key: str | None) -> str:
    """The model id a server answers to (its /v1/models).

    Raises:
        InputError: nothing answers there, or it is not an OpenAI-compatible server.
    """
    import json
    import os
    import urllib.request

    key = api_key or os.environ.get("MEDGEM_API_KEY")
    asked = urllib.request.Request(f"{url}/v1/models",
                                   headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(asked, timeout=10) as response:
            return str(json.loads(response.read())["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"no medgem server answers at {url} ({exc})",
                         "check --server (see `medgem ps`), or drop it to load the model here") from None


def _record_sources(args: argparse.Namespace, audit_id: str | None, inputs: Inputs) -> None:
    """Which PACS study the answer saw (hashed UIDs), under its record: what a later
    `medgem audit send-back` follows. Only where the answer's record is (a server of the
    same store wrote it, or this process did)."""
    if audit_id is None:
        return
    from medgem.sendback.reviewed import record_sources

    with audit_store(args) as store:
        if store is not None and store.get(audit_id) is not None:
            record_sources(store, audit_id, inputs.studies)


def _send_back(args: argparse.Namespace, answer: Any, inputs: Inputs) -> None:
    """The answer as an SR on the study's PACS; the send (or its failure) audited as a child of
    the answer's record. Boxes go with it when the model saw one image."""
    from medgem.answer.boxes import parse_boxes
    from medgem.sendback import send_report

    (study,) = inputs.studies
    boxes = []
    if len(inputs.images) == 1:
        boxes = [(b.label, b.x0, b.y0, b.x1, b.y1) for b in parse_boxes(answer.text, inputs.images[0].size)]
    with audit_store(args) as store:
        try:
            sr, body = send_report(study, answer=answer.text, model=answer.model.id,
                                   model_version=f"{answer.model.revision or 'unknown'} ({answer.model.engine})",
                                   caveat=answer.caveat or "", audit_id=answer.audit_id, reviewed=None,
                                   boxes=boxes)
        except Exception as exc:
            if store is not None:
                store.append("pacs_send", {**study.reference.audit_fields(), "status": "failed",
                                           "error": str(exc)}, parent=answer.audit_id)
            raise
        if store is not None:
            store.append("pacs_send", body, parent=answer.audit_id)
    print(f"medgem: sent the answer to {study.reference.where} as a preliminary DICOM SR "
          f"(series …{str(sr.SeriesInstanceUID)[-12:]}, {len(study.instances)} image reference(s), "
          f"{len(boxes)} box(es))", file=sys.stderr)
    if getattr(args, "fhir", None) and args.fhir.startswith(("http://", "https://")):
        _send_fhir_report(args, answer, study)


def _send_fhir_report(args: argparse.Namespace, answer: Any, study: Any) -> None:
    """The answer as a preliminary DiagnosticReport to the FHIR server the patient came from."""
    import re

    from medgem.config import load_settings
    from medgem.sendback.fhir_report import diagnostic_report, post_report

    patient = re.sub(r"^.*/Patient/([^/]+)/?$", r"\1", args.fhir.strip())
    report = diagnostic_report(patient=patient, study_uid=study.reference.study, answer=answer.text,
                               model=answer.model.id, caveat=answer.caveat or "",
                               audit_id=answer.audit_id)
    body = post_report(args.fhir, report, token=args.fhir_token or load_settings().fhir_token,
                       timeout=args.pacs_timeout)
    with audit_store(args) as store:
        if store is not None:
            store.append("fhir_send", body, parent=answer.audit_id)
    print(f"medgem: sent a preliminary DiagnosticReport to {body['server']}", file=sys.stderr)


def _cite(args: argparse.Namespace, context: Any, audit_id: str | None) -> None:
    """Which FHIR resources the answer was given: on stderr, and in the audit trail as a
    child of the answer's record."""
    cited = ", ".join(context.cited[:12]) + (" …" if len(context.cited) > 12 else "")
    print(f"medgem: patient record from {context.source}: {len(context.cited)} of "
          f"{context.total} FHIR resources sent ({cited})", file=sys.stderr)
    if audit_id is None:
        return
    with audit_store(args) as store:
        if store is not None:
            store.append("fhir_context", context.audit_fields(), parent=audit_id)


def _save_preprocessed(inputs: Inputs, folder: Path) -> None:
    """The images as the model gets them, named as `medgem inspect --save-preprocessed` names
    them (``01_chest.png``, ``01_ct_slice_001.png``), written before the model loads."""
    from medgem.inputs.preview import save_preprocessed

    written = save_preprocessed(inputs.items, folder)
    print(f"medgem: wrote {len(written)} preprocessed image(s) to {folder}", file=sys.stderr)


def _check_writable(target: Path) -> None:
    """The --boxes PNG's folder, made now: a path that cannot be written fails here, not after
    the answer."""
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write the boxes to {target} ({exc.strerror or exc})",
                         "give --boxes a .png path in a folder you can write") from None


def _draw_boxes(answer: str, inputs: Inputs, target: Path) -> None:
    from medgem.answer.boxes import draw_boxes, parse_boxes

    image = inputs.images[0]
    boxes = parse_boxes(answer, image.size)
    draw_boxes(image, boxes, target)
    print(f"medgem: drew {len(boxes)} box(es) on {target}", file=sys.stderr)
