"""The audit trail: every request and answer, append-only and hash-chained, with reviews.

``open_store`` picks the backend from a path or URL; SQLite is built in. Records hold hashes of
the inputs, never the prompt text or images, unless the operator opted in.
"""

from __future__ import annotations

from pathlib import Path

from medgem.audit.records import (
    VERDICTS,
    AuditRecord,
    AuditStore,
    VerifyReport,
    add_review,
    canonical_json,
    sha256_hex,
)
from medgem.audit.sqlite import SQLiteAuditStore
from medgem.config import audit_path
from medgem.errors import InputError

__all__ = ["VERDICTS", "AuditRecord", "AuditStore", "VerifyReport", "add_review", "canonical_json",
           "open_store", "sha256_hex"]


def open_store(location: str | Path | None = None) -> AuditStore:
    """Open an audit store.

    Args:
        location: a file path, ``sqlite:///path``, ":memory:", or None for the default path
            (``medgem.config.audit_path``).

    Raises:
        InputError: a database URL whose backend is not built in, or a path that cannot hold
            an audit store (no such folder, a file where a folder should be, not a database).
    """
    import sqlite3

    text = str(location if location is not None else audit_path())
    if "://" in text and not text.startswith("sqlite:///"):
        raise InputError(
            f"no audit backend for '{text.split('://')[0]}://' URLs",
            "use a SQLite file path, or implement medgem.audit.AuditStore for that database",
        )
    path = text.removeprefix("sqlite:///")
    try:
        return SQLiteAuditStore(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot open the audit store at {path} ({reason})",
                         "give a writable file path with --audit-db or MEDGEM_AUDIT_DB") from exc
