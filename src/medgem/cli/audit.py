"""`medgem audit list|show|verify|export|review|send-back`: read and check the audit trail,
review answers, and send a reviewed answer back to the PACS its study came from."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

from medgem.audit import AuditRecord, AuditStore
from medgem.errors import InputError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="list, show, verify and export the audit trail",
        description="Every request and answer the server handled, hash-chained; reviews linked.",
    )
    parser.add_argument("--db", help="audit store (default: $MEDGEM_AUDIT_DB or ~/.local/share/medgem/audit.sqlite)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="newest records first")
    listing.add_argument("--kind", choices=["accepted", "answer", "review", "rejected", "error", "interrupted",
                                            "pacs_fetch", "pacs_source", "pacs_send", "fhir_context", "fhir_send"],
                         help="only records of this kind")
    listing.add_argument("--limit", type=int, default=50, help="most records shown (default 50)")
    show = actions.add_parser("show", help="one record with its reviews, as JSON")
    show.add_argument("id", help="the record id (from `medgem audit list` or an answer's stats line)")
    verify = actions.add_parser("verify", help="check the hash chain; exit 1 if anything was edited or deleted")
    export = actions.add_parser("export", help="all records as JSON lines (with hashes)")
    export.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")
    review = actions.add_parser("review", help="record a review of an answer")
    review.add_argument("id", help="the answer's record id")
    review.add_argument("verdict", choices=["accept", "correct", "reject"],
                        help="accept the answer, correct it (--correction) or reject it")
    review.add_argument("--correction", help="the corrected text (verdict 'correct')")
    review.add_argument("--note", help="free text kept with the review")
    review.add_argument("--reviewer", required=True, type=_reviewer_name, help="who reviews (recorded)")
    send_back = _add_send_back(actions)
    for action in (listing, show, verify, export, review, send_back):
        # `medgem audit verify --db F` reads as naturally as `medgem audit --db F verify`
        action.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _add_send_back(actions: Any) -> argparse.ArgumentParser:
    """`audit send-back`: it sits beside `review` because it acts on what a review decided."""
    from medgem.cli.clinic import add_pacs_access_flags

    send: argparse.ArgumentParser = actions.add_parser(
        "send-back", help="store a reviewed answer on its study's PACS as a DICOM SR (and a FHIR report)",
        description="Send an answer back where clinicians look, once a clinician reviewed it: the "
        "correction if the verdict was 'correct', the reviewer as the SR's verifying observer. "
        "The audit store keeps UID hashes only, so --study names the study again; it must be the "
        "one the answer was about, on the PACS its images came from.")
    send.add_argument("id", help="the answer's record id")
    send.add_argument("--study", required=True, metavar="REF",
                      help="the study the question was about, as given to `ask --study` or in the "
                           "image_dicom part (DICOMweb URL or dimse://AE@HOST:PORT/StudyUID)")
    send.add_argument("--allow-unreviewed", action="store_true",
                      help="send an answer nobody reviewed (as a preliminary, unverified report)")
    add_pacs_access_flags(send)
    send.add_argument("--fhir", metavar="URL", help="also POST a preliminary DiagnosticReport for "
                                                    "https://HOST/fhir/Patient/ID (the reviewer as its interpreter)")
    send.add_argument("--fhir-token", metavar="TOKEN",
                      help="bearer token for the FHIR server (default: $MEDGEM_FHIR_TOKEN or fhir_token)")
    return send


def run(args: argparse.Namespace) -> int:
    from medgem.audit import open_store

    args.store_path = _existing_store(args.db)
    with closing(open_store(args.db)) as store:
        return _ACTIONS[args.action](store, args)


def _existing_store(db: str | None) -> str:
    """The store's file, refused when it does not exist: reading must not create an empty
    store and then report on it (a mistyped --db once verified "OK: 0 records").

    Raises:
        InputError: no store at that path.
    """
    from medgem.config import audit_path
    text = str(db) if db is not None else str(audit_path())
    if text == ":memory:" or ("://" in text and not text.startswith("sqlite:///")):
        return text  # open_store names what it cannot open
    path = Path(text.removeprefix("sqlite:///")).expanduser()
    if not path.exists():
        raise InputError(
            f"no audit store at {path}",
            "nothing was recorded there; `medgem serve`, `ask`, `chat` and `eval` write to "
            "$MEDGEM_AUDIT_DB or ~/.local/share/medgem/audit.sqlite unless given --audit-db: "
            "name that file with --db" if db is not None else
            "nothing has been recorded on this machine yet (or $MEDGEM_AUDIT_DB named another "
            "file when it was)",
        )
    return str(path)


def _list(store: AuditStore, args: argparse.Namespace) -> int:
    print("seq\tcreated\tkind\tid\tuser\tdetail")
    for record in store.records(kind=args.kind, limit=args.limit, newest_first=True):
        print(f"{record.seq}\t{record.created}\t{record.kind}\t{record.id}\t{record.body.get('user') or '-'}\t{_detail(record)}")
    return 0


def _detail(record: AuditRecord) -> str:
    body = record.body
    if record.kind == "answer":
        usage = body.get("usage", {})
        return f"{body.get('model', {}).get('id')} {body.get('finish_reason')} {usage.get('completion_tokens', 0)} tok"
    if record.kind == "review":
        return f"{body.get('verdict')} of {record.parent} by {body.get('reviewer') or '-'}"
    if record.kind == "accepted":
        return f"request {body.get('request_id')} via {body.get('endpoint')}"
    if record.kind == "interrupted":
        return f"request {body.get('request_id')} never ended: the server stopped"
    if record.kind in ("pacs_fetch", "pacs_source"):  # what was read: counts and the PACS, no UID
        failed = " failed" if body.get("status") == "failed" else ""
        return f"{len(body.get('instances') or [])} instance(s) on {body.get('pacs')}{failed}"
    if record.kind == "fhir_context":
        return f"{len(body.get('cited') or [])} of {body.get('total')} FHIR resources for {record.parent}"
    if record.kind in ("pacs_send", "fhir_send"):  # what went where, and how it went
        return (f"{body.get('kind') or record.kind} {body.get('status') or 'stored'} to "
                f"{body.get('pacs') or body.get('server')} for {record.parent}")
    error = body.get("error") or {}
    return f"{body.get('status')} {error.get('code')}"


def _show(store: AuditStore, args: argparse.Namespace) -> int:
    record = store.get(args.id)
    if record is None:
        raise InputError(f"no audit record '{args.id}'", "see `medgem audit list`")
    data = record.to_dict() | {"reviews": [r.to_dict() for r in store.children(record.id)]}
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def _verify(store: AuditStore, args: argparse.Namespace) -> int:
    report = store.verify()
    if report.ok and report.records == 0:
        raise InputError(f"the audit store {args.store_path} holds no records, so there is "
                         "nothing to verify", "is it the store the answers went to? name that "
                         "one with --db")
    for problem in report.problems:
        print(f"medgem: {problem}", file=sys.stderr)
    state = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{state}: {report.records} records, head {report.head} ({args.store_path})")
    return 0 if report.ok else 1


def _reviewer_name(value: str) -> str:
    """A blank --reviewer recorded a review by nobody (the SR's verifying observer empty)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("give the reviewer's name, not a blank")
    return value.strip()


def _export(store: AuditStore, args: argparse.Namespace) -> int:
    try:
        target = args.output.open("w", encoding="utf-8") if args.output else nullcontext(sys.stdout)
    except OSError as exc:  # a folder, a path under a file, no permission
        raise InputError(f"cannot write the export to {args.output} ({exc.strerror or exc})",
                         "give -o a file in a folder that exists, or leave it out for stdout") from None
    with target as out:
        for record in store.records():
            out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return 0


def _review(store: AuditStore, args: argparse.Namespace) -> int:
    from medgem.audit import add_review

    record = add_review(store, args.id, args.verdict, correction=args.correction, note=args.note,
                        reviewer=args.reviewer, user="cli")
    print(record.id)
    return 0


def _send_back(store: AuditStore, args: argparse.Namespace) -> int:
    """Everything the store and the flags can refuse is refused before the PACS is asked
    (no review, a rejection, no PACS study, another study); then the study is found again
    from the record's hashes, the SR stored and each step recorded under the answer."""
    from medgem.audit.trail import local_user
    from medgem.cli.clinic import study_references
    from medgem.config import load_settings
    from medgem.inputs.pacs import StudyReference
    from medgem.inputs.pacs.fetch import fetch_evidence
    from medgem.sendback.reviewed import (
        answer_record,
        check_reference,
        decide,
        send_fhir,
        send_sr,
        source_of,
    )

    answer = answer_record(store, args.id)
    decision = decide(store, answer, allow_unreviewed=args.allow_unreviewed)
    source = source_of(store, answer)
    if args.fhir and not args.fhir.startswith(("http://", "https://")):
        raise InputError("--fhir takes the patient's URL on a FHIR server",
                         "give https://HOST/fhir/Patient/ID")
    args.study = [args.study]
    reference = study_references(args)[0]  # the token from the flag or the settings, as ask's
    assert isinstance(reference, StudyReference)
    check_reference(source, reference)
    user, endpoint = local_user(), "cli:audit send-back"
    try:
        study = fetch_evidence(reference, str(source.body["series"]), list(source.body["instances"]))
    except Exception as exc:
        store.append("pacs_fetch", {"user": user, "endpoint": endpoint, **reference.audit_fields(),
                                    "status": "failed", "error": str(exc)}, parent=answer.id)
        raise
    store.append("pacs_fetch", {"user": user, "endpoint": endpoint, **study.audit_fields()}, parent=answer.id)
    sr, record = send_sr(store, answer, study, decision, user=user, endpoint=endpoint)
    state = (f"{'accepted' if decision.verdict == 'accept' else 'corrected'} by {decision.reviewer}"
             if decision.review_id else "unreviewed, as a preliminary, unverified report")
    print(f"medgem: sent answer {answer.id} ({state}) to {reference.where} as a DICOM SR "
          f"(series …{str(sr.SeriesInstanceUID)[-12:]}, {len(study.instances)} image reference(s))",
          file=sys.stderr)
    if args.fhir:
        sent = send_fhir(store, answer, study.reference.study, decision, patient_url=args.fhir,
                         token=args.fhir_token or load_settings().fhir_token, timeout=args.pacs_timeout,
                         user=user, endpoint=endpoint)
        print(f"medgem: sent a preliminary DiagnosticReport to {sent.body.get('server')}", file=sys.stderr)
    print(record.id)
    return 0


_ACTIONS = {"list": _list, "show": _show, "verify": _verify, "export": _export, "review": _review,
            "send-back": _send_back}
