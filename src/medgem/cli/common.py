"""Flags shared by the commands that run a model (ask, describe, chat, serve, eval): each options
object built once from them; ``terminal.py`` shows the answer, ``clinic.py`` adds PACS and FHIR."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgem.answer import INTENDED_USE_CAVEAT
from medgem.api import MedGemma
from medgem.cli.progress import Waiting
from medgem.engines.options import LlamaCppOptions, OptionsError
from medgem.errors import ImageInputError, InputError, MedgemError, SchemaError
from medgem.inputs.options import LIMITS, ImagingOptions
from medgem.request import GenerationOptions
from medgem.structured import Constraint

if TYPE_CHECKING:
    from medgem.audit import AuditStore


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in [low, high]. argparse names the flag the user
    typed in its one-line error (``argument --max-new-tokens: must be at least 1, got -5``),
    so a bad value is refused while the flags are read, before anything loads."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            wanted = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse's own message for a non-number names the type
    return parse


def number_in(low: float, high: float | None = None, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a number >= low (> low when ``open_low``) and <= high."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants a number, got {text!r}") from None
        if value != value or value < low or (open_low and value == low) or (
                high is not None and value > high):
            left = "(" if open_low else "["
            wanted = f"in {left}{low:g}, {high:g}]" if high is not None else (
                f"{'above' if open_low else 'at least'} {low:g}")
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


NO_MODEL = ("no model given: try --model demo (the demo model), see `medgem models` for the "
            "others, or set MEDGEM_MODEL")


def require_model(args: argparse.Namespace, command: str) -> None:
    """A command whose --model is optional at parse time (``--server URL`` names none) stops
    here, as argparse would, in one line that says how to name a model."""
    if args.model is None and not getattr(args, "server", None):
        sys.stderr.write(f"medgem {command}: error: {NO_MODEL} (see medgem {command} --help)\n")
        raise SystemExit(2)


def add_model_flags(parser: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    group = parser.add_argument_group("model")
    default = default_model()
    group.add_argument(
        "--model", "-m", required=model_required and default is None, default=default,
        help="a name from `medgem models` (demo, 4b-it, a converted GGUF, a checkpoint in a model "
        "folder), a checkpoint folder, a .gguf file or a hub id (default: $MEDGEM_MODEL, else "
        f"`model` in the config file{'; now ' + repr(default) if default else ''})",
    )
    group.add_argument(
        "--engine", default="auto",
        help="auto, hf (direct transformers), hf-pipeline, llamacpp or remote (default: auto)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    group.add_argument("--quantize", choices=["4bit", "8bit"], help="bitsandbytes (CUDA only)")
    group.add_argument("--variant", help="force the MedGemma variant (for fine-tunes)")
    group.add_argument("--adapter", metavar="DIR",
                       help="LoRA adapter: a `medgem tune` folder (hf engine) or a GGUF LoRA "
                            "from `medgem convert --adapter` (llamacpp)")
    group.add_argument("--mmproj", help="GGUF vision projector (llamacpp engine)")
    group.add_argument("--n-ctx", type=whole_number(1),
                       help="llama.cpp context window (default 8192; a CT volume needs ~23000)")
    group.add_argument("--threads", type=whole_number(1), help="llama.cpp threads (default: all cores)")
    group.add_argument("--vision", choices=["auto", "llamacpp", "torch"],
                       help="where llama.cpp's image encoder runs: its own clip (f16), or PyTorch "
                       "(bf16 on CPUs with AVX512-BF16/AMX); default auto ($MEDGEM_VISION)")
    group.add_argument("--revision", help="hub revision (branch, tag or commit)")
    group.add_argument("--base-url", help="OpenAI-compatible server URL (remote engine)")
    group.add_argument("--backend", action="append", default=[], metavar="URL",
                       help="an OpenAI-compatible server serving --model (remote engine); give it "
                       "once per server: requests go to the least-loaded one that answers")
    group.add_argument("--api-key", help="API key for the remote server")
    group.add_argument(
        "--no-caveat", action="store_true", help="do not print the intended-use caveat"
    )


def default_model() -> str | None:
    """The model used when --model is not given: $MEDGEM_MODEL, else the config file's.

    A broken config file gives no default here; it is reported when a command reads the
    settings for itself (resolving a name, `medgem models`).
    """
    from medgem.config import load_settings

    try:
        return load_settings().model
    except MedgemError:
        return os.environ.get("MEDGEM_MODEL") or None


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--system", help="system prompt")
    group.add_argument("--think", action="store_true", help="ask thinking variants to reason first")
    group.add_argument("--show-thinking", action="store_true", help="print the reasoning (stderr)")
    group.add_argument("--max-new-tokens", type=whole_number(1),
                       help="answer budget (default per variant)")
    group.add_argument("--temperature", type=number_in(0.0), default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=number_in(0.0, 1.0, open_low=True), default=1.0,
                       help="nucleus sampling (with --temperature)")
    group.add_argument("--seed", type=int, help="makes sampling repeatable")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="end the answer at this text (repeatable)")
    group.add_argument("--json", action="store_true", help="print one JSON object at the end")
    group.add_argument("--json-schema", metavar="FILE|NAME",
                       help="constrain the answer to JSON valid for this schema (a .json file, or "
                       "a built-in: boxes, lab-values, cxr-findings)")
    group.add_argument("--format", choices=["json"],
                       help="json: constrain the answer to a JSON object (any keys)")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """The generation flags as the one options object every later stage reads.

    Raises:
        SchemaError: --json-schema names no readable, valid, supported schema.
    """
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed, stop=tuple(args.stop),
                             think=args.think, constraint=constraint_from_args(args))


def constraint_from_args(args: argparse.Namespace) -> Constraint | None:
    """--json-schema FILE|NAME or --format json as a Constraint (None without either)."""
    from medgem.structured.builtin import BUILTINS

    source, fmt = getattr(args, "json_schema", None), getattr(args, "format", None)
    if source and fmt:
        raise SchemaError("--json-schema and --format json are two constraints", "give one of them")
    if fmt == "json":
        return Constraint.json_object()
    if not source:
        return None
    if source in BUILTINS:
        return BUILTINS[source]
    path = Path(source)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"--json-schema: no file {source}",
                          f"give a .json schema file or a built-in: {', '.join(BUILTINS)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"--json-schema: cannot read {source} ({exc})") from None
    except ValueError as exc:
        raise SchemaError(f"--json-schema: {source} is not JSON ({exc})") from None
    return Constraint.from_schema(schema, name=_schema_name(schema, path))


def _schema_name(schema: Any, path: Path) -> str | None:
    if isinstance(schema, dict) and schema.get("title"):
        return None  # from_schema names it by its title
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:64]
    return name or None


_IMAGING_DEFAULTS = ImagingOptions()


def parse_window(text: str) -> tuple[float, float]:
    """Parse "C,W" (centre, width), e.g. "40,400"."""
    try:
        centre, width = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window wants CENTRE,WIDTH like 40,400, got {text!r}") from None
    if width <= 0:
        raise argparse.ArgumentTypeError(f"--window width must be positive, got {width:g}")
    return centre, width


def add_imaging_flags(parser: argparse.ArgumentParser) -> None:
    """How a volume or series is turned into images: series, windows, frame, slices, modality."""
    parser.add_argument("--series", help="series to use from a folder/zip: its UID or the short UID listed")
    parser.add_argument(
        "--window", type=parse_window, action="append", metavar="C,W",
        help="window centre,width (HU for CT); once = one grey window, three times = the CT "
             "red, green, blue windows",
    )
    parser.add_argument("--frame", type=whole_number(0), help="use this frame (0-based) of a multi-frame file as one image")
    parser.add_argument("--max-slices", type=whole_number(1), default=_IMAGING_DEFAULTS.max_slices,
                        help=f"most slices sent from a volume (default {_IMAGING_DEFAULTS.max_slices})")
    parser.add_argument("--modality", help="modality for inputs that carry none (NIfTI, PNG): CT or MR")


def add_slide_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for whole-slide images and PDFs (ask, describe and inspect)."""
    group = parser.add_argument_group("slides and documents")
    group.add_argument("--max-patches", type=whole_number(1), default=_IMAGING_DEFAULTS.max_patches,
                       help="most 896-px tissue patches sent from a slide "
                            f"(default {_IMAGING_DEFAULTS.max_patches})")
    group.add_argument("--patch-seed", type=int, default=_IMAGING_DEFAULTS.patch_seed,
                       help="seed of the patch sample: the same seed, the same patches "
                            f"(default {_IMAGING_DEFAULTS.patch_seed})")
    group.add_argument("--magnification", type=number_in(0.0, open_low=True),
                       help="objective magnification of the patches (default 10, about 1 um/px)")
    group.add_argument("--mpp", type=number_in(0.0, open_low=True),
                       help="microns per pixel of the slide's full resolution, when the file lacks it")
    group.add_argument("--max-pages", type=whole_number(1), default=_IMAGING_DEFAULTS.max_pages,
                       help="most pages of a PDF (longer ones are refused; "
                            f"default {_IMAGING_DEFAULTS.max_pages})")
    group.add_argument("--pdf-text", action="store_true",
                       help="also send a PDF's text layer with the page images")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ImageInputError(f"{name}={text!r} is not a whole number", f"set {name} to a number") from None


# field -> (what it bounds, metavar, scale from the flag's unit to the field's)
_LIMIT_FLAGS: dict[str, tuple[str, str, int]] = {
    "slice_limit": ("most files in a folder or zip, and frames in one file", "N", 1),
    "max_total_pixels": ("most pixels (rows x columns x frames) one input may declare", "N", 1),
    "max_archive_bytes": ("most MiB a zip may expand to", "MB", 2**20),
    "max_pixels": ("most pixels of one frame", "N", 1),
}


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The reading limits as flags (defaults from MEDGEM_* environment variables, else
    ``ImagingOptions``'s), plus the policies that refuse non-image objects and burned-in text.
    Any subcommand that reads inputs may add them; ``imaging_from_args(args)`` reads them."""
    group = parser.add_argument_group("reading limits (checked while reading, before decoding)")
    for name, (what, metavar, scale) in _LIMIT_FLAGS.items():
        flag, env = LIMITS[name]
        default = getattr(_IMAGING_DEFAULTS, name) // scale
        group.add_argument(flag, type=whole_number(1), metavar=metavar, dest=name,
                           default=_env_int(env, default),
                           help=f"{what} (default {default:,}; ${env})")
    group.add_argument("--allow-non-image", action="store_true",
                       help="send DICOM objects that are not images (RT dose grids, segmentation "
                            "masks) as grey images anyway")
    group.add_argument("--allow-burned-in", action="store_true",
                       help="read DICOM images that declare Burned In Annotation = YES (and no warning for US/SC/XA images that do not say)")


def imaging_from_args(args: argparse.Namespace) -> ImagingOptions:
    """The one ``ImagingOptions`` of a command, from whichever imaging, slide and limit flag
    groups its parser added (the defaults for those it did not).

    Raises:
        ImageInputError: two --window values (one or three are meaningful), or a value out of range.
    """
    given: dict[str, object] = {}
    windows: list[tuple[float, float]] = getattr(args, "window", None) or []
    if len(windows) == 1:
        given["window"] = windows[0]
    elif len(windows) == 3:
        given["ct_windows"] = tuple((c - w / 2.0, c + w / 2.0) for c, w in windows)
    elif windows:
        raise ImageInputError(f"--window was given {len(windows)} times",
                              "give it once (a grey window) or three times (CT red, green, blue)")
    names = ("series", "frame", "max_slices", "modality", "max_patches", "patch_seed",
             "magnification", "mpp", "max_pages", "pdf_text", "allow_non_image", "allow_burned_in")
    given.update({name: getattr(args, name) for name in names if hasattr(args, name)})
    given.update({name: getattr(args, name) * scale for name, (_, _, scale) in _LIMIT_FLAGS.items()
                  if hasattr(args, name)})
    try:
        return replace(_IMAGING_DEFAULTS, **given)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ImageInputError(str(exc), "check the imaging flags") from None


def add_audit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("audit")
    group.add_argument("--audit-db", help="where the audit record of each answer goes: SQLite path "
                       "(default: $MEDGEM_AUDIT_DB or ~/.local/share/medgem/audit.sqlite)")
    group.add_argument("--no-audit", action="store_true",
                       help="write no audit record (says so on stderr)")


@contextmanager
def audit_store(args: argparse.Namespace) -> Iterator[AuditStore | None]:
    """The audit store the flags name (closed after the block), or None under ``--no-audit``."""
    if getattr(args, "no_audit", False):
        yield None
        return
    from medgem.audit import open_store

    with closing(open_store(getattr(args, "audit_db", None) or None)) as store:
        yield store


def load_model(args: argparse.Namespace, *, audit: bool = True) -> MedGemma:
    """The model the flags name, writing each answer's audit record unless ``--no-audit``
    (``audit=False``: the caller writes records itself, as the server does). A stage line
    ("loading NAME … 3 s") shows on a terminal while it loads."""
    store: str | bool = audit
    if audit and getattr(args, "no_audit", False):
        sys.stderr.write("medgem: audit off (--no-audit): these answers leave no audit record\n")
        store = False
    elif audit and getattr(args, "audit_db", None):
        store = args.audit_db
    engine = "remote" if getattr(args, "backend", []) and args.engine == "auto" else args.engine
    with Waiting(f"loading {Path(str(args.model)).name or args.model}"):
        try:
            return MedGemma.load(
                args.model,
                engine=engine,
                options=engine_fields(args),
                variant=args.variant,
                mmproj=args.mmproj,
                revision=args.revision,
                caveat="" if args.no_caveat else INTENDED_USE_CAVEAT,
                audit=store,
                surface=f"cli:{getattr(args, 'command', None) or 'medgem'}",
            )
        except OptionsError as exc:
            raise as_flag_error(exc) from None


# Flags that set engine options, by dest (= the field's name); one not given is None.
_ENGINE_FLAGS = ("device", "dtype", "quantize", "adapter", "n_ctx", "threads", "vision", "api_key")


def engine_fields(args: argparse.Namespace) -> dict[str, object]:
    """The engine flags that were given, as option fields (the engine is not known yet under
    ``--engine auto``: ``MedGemma.load`` builds its options object from these)."""
    urls = [*getattr(args, "backend", []), *([args.base_url] if args.base_url else [])]
    return {name: getattr(args, name) for name in _ENGINE_FLAGS} | {
        "base_url": ",".join(urls) or None,
        "parallel": getattr(args, "parallel", None) or getattr(args, "concurrency", None) or 1,
        "progress": False}  # the stage line (Waiting) says what loads: no library bars under it


def as_flag_error(error: OptionsError) -> InputError:
    """An option the engine does not take, said as the flag that set it."""
    flag = "--" + error.field.replace("_", "-")
    return InputError(f"{flag} does not apply to the {error.engine} engine",
                      f"drop {flag}" + (f", or use --engine {' or '.join(error.takers)}"
                                        if error.takers else ""))


def llamacpp_settings() -> LlamaCppOptions:
    """llama.cpp's options as the settings (environment, file) set them, for commands that run
    its native code without loading a model (doctor, convert, inspect's estimates)."""
    from medgem.config import load_settings

    return LlamaCppOptions.model_validate(load_settings().engine_fields("llamacpp"))
