"""`medgem audit list|show|verify|export|review`: read and check the audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from medgem.audit import AuditRecord, AuditStore


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit", help="list, show, verify and export the audit trail",
        description="Every request and answer the server handled, hash-chained; reviews linked.",
    )
    parser.add_argument("--db", help="audit store (default: $MEDGEM_AUDIT_DB or ~/.local/share/medgem/audit.sqlite)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="newest records first")
    listing.add_argument("--kind", choices=["accepted", "answer", "review", "rejected", "error", "interrupted"],
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
    review.add_argument("--reviewer", required=True, help="who reviews (recorded)")
    for action in (listing, show, verify, export, review):
        # `medgem audit verify --db F` reads as naturally as `medgem audit --db F verify`
        action.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.audit import open_store

    args.store_path = _existing_store(args.db)
    store = open_store(args.db)
    try:
        return _ACTIONS[args.action](store, args)
    finally:
        store.close()


def _existing_store(db: str | None) -> str:
    """The store's file, refused when it does not exist: reading must not create an empty
    store and then report on it (a mistyped --db once verified "OK: 0 records").

    Raises:
        InputError: no store at that path.
    """
    from medgem.config import audit_path
    from medgem.errors import InputError

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
    error = body.get("error") or {}
    return f"{body.get('status')} {error.get('code')}"


def _show(store: AuditStore, args: argparse.Namespace) -> int:
    from medgem.errors import InputError

    record = store.get(args.id)
    if record is None:
        raise InputError(f"no audit record '{args.id}'", "see `medgem audit list`")
    data = record.to_dict() | {"reviews": [r.to_dict() for r in store.children(record.id)]}
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def _verify(store: AuditStore, args: argparse.Namespace) -> int:
    from medgem.errors import InputError

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


def _export(store: AuditStore, args: argparse.Namespace) -> int:
    with args.output.open("w", encoding="utf-8") if args.output else nullcontext(sys.stdout) as out:
        for record in store.records():
            out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return 0


def _review(store: AuditStore, args: argparse.Namespace) -> int:
    from medgem.audit import add_review

    record = add_review(store, args.id, args.verdict, correction=args.correction, note=args.note,
                        reviewer=args.reviewer, user="cli")
    print(record.id)
    return 0


_ACTIONS = {"list": _list, "show": _show, "verify": _verify, "export": _export, "review": _review}
