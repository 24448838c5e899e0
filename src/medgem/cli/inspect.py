"""``medgem inspect FILE_OR_DIR``: show what medgem will send for a medical input, no model loaded.

Prints modality, size, series, slice count, spacing and windows; for a slide its vendor, levels,
chosen levels, tissue fraction and patches; for a PDF its pages (or, with ``--json``, the same as
JSON). ``--save-preprocessed DIR`` writes the exact PNGs the model would get (and a slide's
overview with its tissue mask and patch grid). Nothing printed or written holds patient names,
IDs, dates or full UIDs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medgem.cli.clinic import add_study_flags
from medgem.cli.common import add_imaging_flags, add_limit_flags, add_slide_flags, imaging_from_args
from medgem.errors import InputError
from medgem.inputs.facts import inspect_input
from medgem.inputs.options import MedicalInput
from medgem.inputs.preview import save_preprocessed
from medgem.resolve import Checkpoint


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``inspect``."""
    parser = subparsers.add_parser(
        "inspect", help="show what medgem will send for an image, DICOM, series, NIfTI, slide or PDF "
                        "(no model)",
        description="Show what medgem will send for a medical input, without loading a model: "
                    "modality, size, series, slices, spacing and windows; a slide's levels, "
                    "tissue and patches; a PDF's pages. Nothing shown holds patient names, IDs, "
                    "dates or full UIDs.",
    )
    parser.add_argument("path", type=Path, metavar="FILE_OR_DIR", nargs="?",
                        help="image, DICOM file, DICOM folder or .zip, NIfTI, slide or PDF "
                             "(or --study for a study on a PACS)")
    parser.add_argument("--save-preprocessed", type=Path, metavar="DIR",
                        help="write one PNG per image or slice, exactly what the model gets")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--model", metavar="MODEL",
                        help="a llama.cpp model (GGUF) to estimate the time to first token with, "
                             "from the speeds measured with it on this machine (default "
                             "$MEDGEM_MODEL; the model is not loaded)")
    add_imaging_flags(parser)
    add_limit_flags(parser)
    add_slide_flags(parser)
    add_study_flags(parser)
    parser.set_defaults(func=run)


def _text(report: dict[str, object]) -> str:
    lines = [f"source:             {report['source']} ({report['format']})"]
    rows = report.get("series") or []
    assert isinstance(rows, list)
    for row in rows:
        number = f"#{row['number']} " if row.get("number") is not None else ""
        description = f" '{row['description']}'" if row.get("description") else ""
        part = f" {row['body_part']}" if row.get("body_part") else ""
        lines.append(f"series:             {number}{row['series']} {row['modality'] or '?'}{part}{description}, "
                     f"{row['slices']} slices")
    if "choose" in report:
        lines.append(f"next:               {report['choose']}")
        return "\n".join(lines)
    metadata = report.get("metadata", {})
    assert isinstance(metadata, dict)
    lines.append(f"modality:           {report.get('modality') or 'unknown'}")
    lines.append(f"input:              {report['description']}")
    for key in ("rows", "columns", "frames", "slices_total", "slices_sent", "sorted_by", "pixel_spacing_mm",
                "slice_thickness_mm", "slice_spacing_mm", "voxel_size_mm", "photometric", "bits_stored",
                "transfer_syntax", "window", "series", "series_count"):
        if key in metadata:
            lines.append(f"{key + ':':<20}{metadata[key]}")
    lines += _slide_lines(metadata)
    lines.append(f"sends:              {report['sends']}")
    fetched = report.get("fetched")
    if isinstance(fetched, dict):
        frames = f" ({fetched['frames']} of {fetched['frames_of']} frames)" if "frames" in fetched else ""
        lines.append(f"fetched:            {fetched['instances']} of {fetched['of']} instances{frames}, "
                     f"{fetched['bytes']:,} bytes")
    if report.get("instruction"):
        lines.append(f"instruction:        {report['instruction']}")
    estimate = report.get("first_token")
    if isinstance(estimate, dict):
        lines.append(f"first token:        {estimate['text']}")
        if "context_text" in estimate:
            lines.append(f"context:            {estimate['context_text']}")
    warnings = report.get("warnings") or []
    assert isinstance(warnings, list)
    lines += [f"warning:            {warning}" for warning in warnings]
    return "\n".join(lines)


def _slide_lines(metadata: dict[str, object]) -> list[str]:
    """Vendor, levels, chosen levels, tissue and patches of a slide; pages of a PDF."""
    if metadata.get("format") == "pdf":
        return [f"pages:              {metadata['pages']}",
                f"text layer:         {metadata['text_chars']} characters"
                + (" (sent)" if metadata.get("text_sent") else
                   " (no text layer: only the page images are sent)" if not metadata["text_chars"]
                   else " (not sent; --pdf-text sends it)")]
    if metadata.get("format") != "slide":
        return []
    lines = [f"vendor:             {metadata['vendor']}"]
    levels = metadata["levels"]
    assert isinstance(levels, list)
    for row in levels:
        lines.append(f"level {row['level']}:{'':<12}{row['width']}x{row['height']}, "
                     f"{row['mpp']} um/px (downsample {row['downsample']})")
    lines += [
        f"resolution from:    {metadata['mpp_source']}",
        f"tissue level:       {metadata['mask_level']}",
        f"patch level:        {metadata['patch_level']} ({metadata['patch_region_px']}-px regions "
        f"-> 896x896 at {metadata['magnification']:g}x)",
        f"tissue fraction:    {float(metadata['tissue_fraction']):.1%}",  # type: ignore[arg-type]
        f"patches:            {metadata['patches']} of {metadata['tissue_cells']} tissue cells "
        f"(seed {metadata['patch_seed']})",
    ]
    return lines


def model_instruction(item: MedicalInput) -> str | None:
    """The text the model is told before the images of this input (None: none, the question
    goes with the images as they are)."""
    from medgem.request.compose import PATHOLOGY_INSTRUCTION, sequence_marker, volume_instruction

    if item.kind == "slide":
        return PATHOLOGY_INSTRUCTION
    if item.kind == "volume":
        marker = sequence_marker(item.modality)
        return f"{volume_instruction(item.modality)} (each image followed by {marker} n)"
    return None


def first_token_estimate(model: str, item: MedicalInput, instruction: object) -> dict[str, object]:
    """How long this input would take to its first token with ``model`` here, from the speeds
    the llama.cpp engine measured with the same files, tower and thread count on this CPU."""
    from medgem.cli.common import llamacpp_settings
    from medgem.engines.llamacpp.speeds import (
        estimate_first_token,
        soft_tokens_per_image,
        text_tokens,
    )
    from medgem.resolve import resolve_checkpoint

    checkpoint = resolve_checkpoint(model, offline=True)
    if checkpoint.format != "gguf":
        return {"seconds": None, "text": "estimated for llama.cpp models (GGUF) only"}
    images = len(item.images)
    # the instruction and template, and a marker after each slice of a volume
    text_count = text_tokens(str(instruction or ""), markers=images if item.kind == "volume" else 0)
    settings = llamacpp_settings()
    context = _context(checkpoint, images, text_count)
    seconds, measured = estimate_first_token(checkpoint.path, checkpoint.mmproj, images, text_count,
                                             vision=settings.vision, vision_dtype=settings.vision_dtype)
    if seconds is None or measured is None:
        return {"seconds": None, "text": f"not measured with {checkpoint.path.name} on this machine "
                "yet: ask it one question with an image and medgem records its speeds", **context}
    tower = (f"{images} image(s) x {measured.vision_s_per_image:.1f} s in the vision tower + "
             if images and measured.vision_s_per_image is not None else "")
    spread = measured.first_token_range(images, soft_tokens_per_image(checkpoint.mmproj), text_count)
    # one run is one point of a spread (Speeds.first_token_range)
    reach = (f", {_duration_range(*spread)} over the runs kept" if spread
             else ", one run: each question asked here narrows it")
    long = measured.long_prefill
    slower = (f", slower as the prompt grows, as a {long.tokens:,}-token prompt ran here" if long else "")
    text = (f"~{_duration(seconds)} ({tower}prefill at {measured.prefill_tokens_per_s:.0f} "
            f"tokens/s{slower}; measured here with {checkpoint.path.name}, {measured.runs} run(s){reach}, "
            f"{measured.measured_on})")
    return {"seconds": seconds, "range_seconds": list(spread) if spread else None,
            "vision_s_per_image": measured.vision_s_per_image,
            "prefill_tokens_per_s": measured.prefill_tokens_per_s, "text": text, **context}


def _context(checkpoint: Checkpoint, images: int, text_tokens: int) -> dict[str, object]:
    """The prompt's tokens, and what llama.cpp's context must hold for it with a volume's
    answer: past the default 8,192, which surfaces size it and which need --n-ctx."""
    from medgem.engines.llamacpp.engine import DEFAULT_N_CTX
    from medgem.engines.llamacpp.speeds import context_need
    from medgem.request.variants import default_budget

    need = context_need(checkpoint.path, checkpoint.mmproj, images, text_tokens,
                        default_budget("volume", False))
    prompt, window = need.prompt, need.window
    if prompt + 1 > window:
        text = f"~{prompt:,} tokens: more than the model's window of {window:,}; send fewer slices"
    elif need.with_answer <= DEFAULT_N_CTX:
        text = f"~{prompt:,} tokens: within llama.cpp's default context of {DEFAULT_N_CTX:,}"
    else:
        text = (f"~{prompt:,} tokens: past llama.cpp's default context of {DEFAULT_N_CTX:,}; "
                f"`medgem ask` sizes it to the question, a server or Python load needs "
                f"--n-ctx {need.n_ctx} (options={{'n_ctx': {need.n_ctx}}})")
    return {"prompt_tokens": prompt, "n_ctx": need.n_ctx, "context_text": text}


def _duration_range(low: float, high: float) -> str:
    """"15-18 s", "2-3 min", or "50 s-2 min" where the unit changes."""
    first, last = _duration(low), _duration(high)
    unit = first.split(" ")[1]
    return f"{first.split(' ')[0]}-{last}" if last.endswith(" " + unit) else f"{first}-{last}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run(args: argparse.Namespace) -> int:
    """Inspect the input, print the report, optionally save the preprocessed PNGs.

    Raises:
        ImageInputError: unreadable input (the CLI prints it on one line).
    """
    if (args.path is None) == (not args.study):
        raise InputError("inspect takes a FILE_OR_DIR or one --study", "give one of them")
    if args.study:
        from medgem.cli.clinic import record_fetches, study_references
        from medgem.inputs.pacs.fetch import inspect_study

        references = study_references(args)
        if len(references) > 1:
            raise InputError("inspect takes one --study at a time", "inspect them one by one")
        try:
            report, item, fetched = inspect_study(references[0], imaging_from_args(args))  # type: ignore[arg-type]
        except Exception as exc:
            record_fetches(args, references, error=exc)
            raise
        if fetched is not None:
            record_fetches(args, [fetched])
    else:
        report, item = inspect_input(args.path, imaging_from_args(args))
    if item is not None:
        report["instruction"] = model_instruction(item)
        model = args.model or os.environ.get("MEDGEM_MODEL")
        if model:
            report["first_token"] = first_token_estimate(model, item, report["instruction"])
    if args.save_preprocessed is not None and item is not None:
        written = save_preprocessed([item], args.save_preprocessed)
        report["saved"] = [str(p) for p in written]
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(_text(report))
        if "saved" in report:
            print(f"saved:              {len(written)} PNG(s) in {args.save_preprocessed}")
    return 0
