"""The clinic's own systems on the command line: studies from a PACS (``--study``, DICOMweb or
DIMSE) and the patient's record from FHIR (``--fhir``), read through the one inputs door and
audited by UID hash."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from medgem.cli.common import audit_store, imaging_from_args, number_in, whole_number
from medgem.errors import InputError
from medgem.inputs import Inputs


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """Studies from a PACS: ``--study`` (DICOMweb URL or ``dimse://``), its token and timeout."""
    group = parser.add_argument_group("studies from a PACS")
    group.add_argument("--study", action="append", default=[], metavar="REF",
                       help="a study, series or instance on a PACS: "
                            "https://HOST/dicom-web/studies/UID[/series/UID[/instances/UID]] or "
                            "dimse://AE@HOST:PORT/StudyUID[/SeriesUID][?move=AE@PORT] (C-GET, or "
                            "C-MOVE to medgem on PORT); only the slices sent are fetched")
    add_pacs_access_flags(group)
    if "--series" not in parser._option_string_actions:  # inspect has it with the imaging flags
        group.add_argument("--series", help="series to use from the study (or a folder/zip): its "
                                            "UID or the short UID `medgem inspect` lists")


def add_pacs_access_flags(group: argparse._ActionsContainer) -> None:
    """How medgem reaches a PACS: the DICOMweb token, the timeout, its own DIMSE AE title."""
    group.add_argument("--dicomweb-token", metavar="TOKEN",
                       help="bearer token for the DICOMweb server (default: $MEDGEM_DICOMWEB_TOKEN "
                            "or dicomweb_token in the config file)")
    group.add_argument("--pacs-timeout", type=number_in(0, open_low=True), default=30.0, metavar="S",
                       help="seconds one PACS or FHIR request may take (default 30)")
    group.add_argument("--pacs-aet", default="MEDGEM", metavar="AE",
                       help="medgem's own AE title for DIMSE (default MEDGEM)")


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
    group.add_argument("--fhir-budget", type=whole_number(1), default=1500, metavar="TOKENS",
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
    from medgem.audit.trail import local_user

    with audit_store(args) as store:
        if store is None:
            return
        for item in fetched:
            body: dict[str, object] = {"user": local_user(),
                                       "endpoint": f"cli:{getattr(args, 'command', None) or 'medgem'}"}
            body |= item.audit_fields()  # type: ignore[attr-defined]
            if error is not None:
                body |= {"status": "failed", "error": str(error)}
            store.append("pacs_fetch", body)


def read_command_inputs(args: argparse.Namespace, question: str | None = None) -> Inputs:
    """A command's ``--image`` files and ``--study`` references through the one inputs door,
    each PACS fetch (or failed fetch) recorded in the audit trail."""
    from medgem.inputs import read_inputs

    references = study_references(args)
    series = getattr(args, "series", None)
    if series and not args.image and not references:  # it picks; it reads nothing by itself
        raise InputError(f"--series {series} picks a series from --image or --study, and neither was given",
                         f"give the folder as --image {series}" if Path(series).exists()
                         else "add --image FOLDER_OR_ZIP or --study REF")
    try:
        inputs = read_inputs([*args.image, *references], imaging_from_args(args),  # type: ignore[list-item]
                             question=question)
    except Exception as exc:
        if references:
            record_fetches(args, references, error=exc)
        raise
    record_fetches(args, inputs.studies)
    return inputs
