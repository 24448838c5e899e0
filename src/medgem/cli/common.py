"""Flags and output shared by the commands that run a model (ask, describe, chat)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from medgem.answer import Answer, AnswerChunk, FinalChunk, StreamChunk, ThinkingChunk
from medgem.api import MedGemma
from medgem.cli.progress import Waiting, until_first
from medgem.engines.options import EngineOptions, LlamaCppOptions, OptionsError, options_for
from medgem.errors import ImageInputError, InputError
from medgem.inputs import Inputs
from medgem.inputs.options import LIMITS, ImagingOptions
from medgem.request import GenerationOptions
from medgem.structured import Constraint


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
    from medgem.errors import MedgemError

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
    from medgem.errors import SchemaError
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


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
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


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """Studies from a PACS: ``--study`` (DICOMweb URL or ``dimse://``), its token and timeout."""
    group = parser.add_argument_group("studies from a PACS")
    group.add_argument("--study", action="append", default=[], metavar="REF",
                       help="a study, series or instance on a PACS: "
                            "https://HOST/dicom-web/studies/UID[/series/UID[/instances/UID]] or "
                            "dimse://AE@HOST:PORT/StudyUID[/SeriesUID]; only the slices sent are fetched")
    group.add_argument("--dicomweb-token", metavar="TOKEN",
                       help="bearer token for the DICOMweb server (default: $MEDGEM_DICOMWEB_TOKEN "
                            "or dicomweb_token in the config file)")
    group.add_argument("--pacs-timeout", type=float, default=30.0, metavar="S",
                       help="seconds one PACS request may take (default 30)")
    group.add_argument("--pacs-aet", default="MEDGEM", metavar="AE",
                       help="medgem's own AE title for DIMSE (default MEDGEM)")
    if "--series" not in parser._option_string_actions:  # inspect has it with the imaging flags
        group.add_argument("--series", help="series to use from the study (or a folder/zip): its "
                                            "UID or the short UID `medgem inspect` lists")


def add_fhir_flags(parser: argparse.ArgumentParser) -> None:
    """Patient context from FHIR R4: a bundle file or a server's Patient URL."""
    group = parser.add_argument_group("patient record (FHIR R4)")
    group.add_argument("--fhir", metavar="BUNDLE_OR_URL",
                       help="a FHIR Bundle JSON file, or https://HOST/fhir/Patient/ID: its "
                            "conditions, medications, observations and reports go before the "
                            "question, most relevant first, each cited by resource id")
    group.add_argument("--fhir-token", metavar="TOKEN",
                       help="bearer token for the FHIR server (default: $MEDGEM_FHIR_TOKEN or "
                            "fhir_token in the config file)")
    group.add_argument("--fhir-budget", type=int, default=1500, metavar="TOKENS",
                       help="most tokens of patient record in the prompt (default 1500)")


def patient_context(args: argparse.Namespace, question: str) -> object:
    """The ``--fhir`` record for this question, or None without the flag.

    Raises:
        PacsError: a record that is not FHIR, or a FHIR server that refuses or is down.
    """
    if not getattr(args, "fhir", None):
        return None
    from medgem.config import load_settings
    from medgem.inputs.fhir import load_context

    token = args.fhir_token or (load_settings().fhir_token if args.fhir.startswith("http") else None)
    return load_context(args.fhir, question, token=token, timeout=getattr(args, "pacs_timeout", 30.0),
                        budget_chars=4 * args.fhir_budget)


def study_references(args: argparse.Namespace) -> list[object]:
    """The ``--study`` values as references carrying the token (flag, else the settings) and
    timeout.

    Raises:
        PacsError: a value that is not a study reference.
    """
    from medgem.config import load_settings
    from medgem.inputs.pacs import parse_study_reference

    texts = getattr(args, "study", None) or []
    if not texts:
        return []
    token = getattr(args, "dicomweb_token", None) or load_settings().dicomweb_token
    return [parse_study_reference(text).with_access(token, args.pacs_timeout, args.pacs_aet)
            for text in texts]


def record_fetches(args: argparse.Namespace, fetched: Iterable[object], *,
                   error: BaseException | None = None) -> None:
    """One audit event per PACS fetch ("pacs_fetch": who, from where, hashed UIDs, bytes), or
    per reference that failed (with the error's one line); none under ``--no-audit``."""
    from medgem.audit import open_store
    from medgem.audit.trail import _local_user

    if getattr(args, "no_audit", False):
        return
    store = open_store(getattr(args, "audit_db", None) or None)
    try:
        for item in fetched:
            body: dict[str, object] = {"user": _local_user(),
                                       "endpoint": f"cli:{getattr(args, 'command', None) or 'medgem'}"}
            body |= item.audit_fields()  # type: ignore[attr-defined]
            if error is not None:
                body |= {"status": "failed", "error": str(error)}
            store.append("pacs_fetch", body)
    finally:
        store.close()


def read_command_inputs(args: argparse.Namespace, question: str | None = None) -> Inputs:
    """A command's ``--image`` files and ``--study`` references through the one inputs door,
    each PACS fetch (or failed fetch) recorded in the audit trail."""
    from medgem.inputs import read_inputs

    references = study_references(args)
    try:
        inputs = read_inputs([*args.image, *references], imaging_from_args(args),  # type: ignore[list-item]
                             question=question)
    except Exception as exc:
        if references:
            record_fetches(args, references, error=exc)
        raise
    record_fetches(args, inputs.studies)
    return inputs


def add_limit_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """The reading limits as flags (defaults from MEDGEM_* environment variables, else
    ``ImagingOptions``'s), plus the policies that refuse non-image objects and burned-in text.
    Any subcommand that reads inputs may add them; ``imaging_from_args(args)`` reads them."""
    environ = os.environ if environ is None else environ
    group = parser.add_argument_group("reading limits (checked while reading, before decoding)")
    for name, (what, metavar, scale) in _LIMIT_FLAGS.items():
        flag, env = LIMITS[name]
        default = getattr(_IMAGING_DEFAULTS, name) // scale
        group.add_argument(flag, type=whole_number(1), metavar=metavar, dest=name,
                           default=_env_int(environ, env, default),
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
    with Waiting(f"loading {Path(str(args.model)).name or args.model}"):
        return _load(args, store)


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


def flag_options(engine: str, fields: Mapping[str, object]) -> EngineOptions:
    """The named engine's options from flag values (:func:`engine_fields`).

    Raises:
        InputError: a flag the engine does not take, naming the engines that do.
    """
    try:
        return options_for(engine, fields)
    except OptionsError as exc:
        raise as_flag_error(exc) from None


def llamacpp_settings() -> LlamaCppOptions:
    """llama.cpp's options as the settings (environment, file) set them, for commands that run
    its native code without loading a model (doctor, convert, inspect's estimates)."""
    from medgem.config import load_settings

    return LlamaCppOptions.model_validate(load_settings().engine_fields("llamacpp"))


def _load(args: argparse.Namespace, store: str | bool) -> MedGemma:
    from medgem.answer import INTENDED_USE_CAVEAT

    try:
        return MedGemma.load(
            args.model,
            engine="remote" if getattr(args, "backend", []) and args.engine == "auto" else args.engine,
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


class Shown:
    """What :func:`render` has written so far: the answer and thought pieces, and when it began
    (what a cancelled answer's record keeps)."""

    def __init__(self) -> None:
        import time

        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.started = time.monotonic()
        self.first: float | None = None


def render(
    chunks: Iterable[StreamChunk],
    *,
    as_json: bool,
    show_thinking: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    prefix: str = "",
    shown: Shown | None = None,
) -> Answer:
    """Stream an answer to the terminal (or collect it for --json) and return it.

    Until the first chunk comes (the prompt and its images being read) a stage line waits on
    ``err`` when it is a terminal; ``prefix`` (chat's ``medgemma> ``) is written to ``out``
    once that line is gone. ``shown`` collects what was written (for a Ctrl-C's record).
    ``out``/``err`` default to the streams current at the call (not at import).
    """
    import time

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    shown = shown if shown is not None else Shown()
    answer: Answer | None = None
    thinking_open = False
    for chunk in until_first(iter(chunks), "reading the prompt", err):
        if shown.first is None:
            shown.first = time.monotonic()
        if prefix and not as_json:
            out.write(prefix)
            out.flush()
            prefix = ""
        if isinstance(chunk, FinalChunk):
            answer = chunk.answer
            continue
        if isinstance(chunk, ThinkingChunk):
            shown.thinking.append(chunk.text)
            if show_thinking and not as_json:
                if not thinking_open:
                    err.write("[thinking]\n")
                    thinking_open = True
                err.write(chunk.text)
                err.flush()
        elif isinstance(chunk, AnswerChunk):
            shown.answer.append(chunk.text)
            if as_json:
                continue
            if thinking_open:
                err.write("\n[/thinking]\n")
                err.flush()
                thinking_open = False
            out.write(chunk.text)
            out.flush()
    assert answer is not None  # assemble() always ends with a FinalChunk
    if as_json:
        out.write(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return answer
    out.write("\n")
    if show_thinking and not answer.thinking:
        err.write("medgem: no thinking: the model wrote no thought before its answer "
                  "(--think asks a thinking variant to think first)\n")
    if not answer.text.strip():
        err.write(f"medgem: the answer is empty (the model ended after "
                  f"{answer.usage.completion_tokens} token(s) with no text; finish reason: "
                  f"{answer.finish_reason})\n")
    if answer.thought_truncated:
        err.write(
            "medgem: the answer budget ran out while the model was thinking; raise "
            "--max-new-tokens for an answer\n"
        )
    elif answer.finish_reason == "length":
        err.write("medgem: the answer was cut at --max-new-tokens\n")
    if answer.structured_error:
        err.write(f"medgem: not valid JSON for the schema: {answer.structured_error}\n")
    if answer.caveat:
        err.write(f"\n⚠ {answer.caveat}\n")
    if answer.label:
        err.write(f"[{answer.label}]\n")
    err.write(_stats(answer) + "\n")
    return answer


def speed_words(answer: Answer) -> str:
    """The decode speed as words that do not lie: a one-token answer has none, and an answer
    whose tokens all came at the end (no text before it) was not measured."""
    tokens = answer.usage.completion_tokens
    t = answer.timings
    decode = t.total_s - t.first_token_s
    if tokens <= 1:
        return "no decode speed (one token)" if tokens == 1 else "no tokens"
    if decode <= 0:
        return "decode speed not measured (no text before the end)"
    return f"{(tokens - 1) / decode:.1f} tok/s"


def _stats(answer: Answer) -> str:
    t = answer.timings
    tokens = answer.usage.completion_tokens
    return (
        f"[{answer.model.id}"
        + (f" + adapter {answer.model.adapter}@{answer.model.adapter_sha256[:12]}"
           if answer.model.adapter and answer.model.adapter_sha256 else "")
        + f" · {answer.model.engine} · {answer.usage.prompt_tokens} prompt + "
        f"{tokens} answer token{'' if tokens == 1 else 's'} · first token {t.first_token_s:.2f} s · "
        f"{speed_words(answer)} · {answer.finish_reason}"
        + (f" · audit {answer.audit_id}" if answer.audit_id else "") + "]"
    )


def record_cancelled(model: MedGemma, request: Any, shown: Shown, err: TextIO = sys.stderr) -> None:
    """After Ctrl-C: the answer so far recorded as cancelled (when this process audits), said
    on ``err`` with the caveat and the label, as a finished answer is."""
    import time

    from medgem.answer import label_for
    from medgem.engines.base import Timings, Usage

    now = time.monotonic()
    first = (shown.first or now) - shown.started
    answer = Answer(text="".join(shown.answer).strip(), thinking="".join(shown.thinking).strip(),
                    finish_reason="cancelled", usage=Usage(0, 0),
                    timings=Timings(first, now - shown.started), model=model.engine.info,
                    caveat=model.caveat, label=label_for(model.engine.info))
    record = None
    if model.audit is not None:
        record = model.audit.answer(request, answer, model.engine.info, {})
    err.write("\nmedgem: stopped (Ctrl-C)" + (f"; the answer so far is recorded as cancelled "
              f"(audit {record})" if record else "") + "\n")
    if answer.caveat:
        err.write(f"\n⚠ {answer.caveat}\n")
    if answer.label:
        err.write(f"[{answer.label}]\n")
    err.flush()


def print_label_first(model: MedGemma, err: TextIO = sys.stderr) -> None:
    """Demo and test models say so before any of their output appears."""
    from medgem.answer import label_for

    label = label_for(model.engine.info)
    if label:
        err.write(f"[{label}]\n")
        err.flush()
