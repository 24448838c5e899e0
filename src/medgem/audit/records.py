"""Audit records, their hash chain, and the store interface every backend implements.

A record is one JSON body plus a little metadata. Each record's hash covers the previous
record's hash and the canonical JSON of the record, so editing or deleting any record breaks
every hash after it: ``verify`` finds it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, Protocol

from medgem.errors import InputError

GENESIS_HASH = "0" * 64
VERDICTS: tuple[str, ...] = ("accept", "correct", "reject")


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# A word that ends like a file medgem reads: in hospitals file names carry patient names and
# record numbers (``Doe_Jane_MRN123456.zip``), so no such name goes into a record verbatim.
_FILE_WORD = (r"[^\s'\"`()<>,;:]+\.(?:zip|dcm|dicom|dic|ima|png|jpe?g|gif|webp|bmp|tiff?|svs|ndpi|scn|"
              r"mrxs|vms|bif|pdf|nii\.gz|nii|gz)(?![A-Za-z0-9])")


def file_name_fields(name: str) -> dict[str, str]:
    """What a record keeps of a file name: its sha256 and its extension."""
    return {"name_sha256": sha256_hex(name), "extension": PurePath(name).suffix.lower()}


def file_token(name: str) -> str:
    """A file name as a record spells it: ``file:<first 12 hex of its sha256><extension>``."""
    fields = file_name_fields(name)
    return f"file:{fields['name_sha256'][:12]}{fields['extension']}"


def redact_file_names(text: str, names: Iterable[str] = ()) -> str:
    """``text`` with each of ``names`` (the file names the request gave) and every other word
    that looks like a file name replaced by its :func:`file_token`."""
    given = [n for n in names if n]
    # the readers see an upload under its name made file-safe (spaces and the like as "_")
    known = sorted({*given, *(re.sub(r"[^A-Za-z0-9._-]", "_", n) for n in given)}, key=len, reverse=True)
    pattern = "|".join([*(re.escape(n) for n in known), _FILE_WORD])
    return re.sub(pattern, lambda m: file_token(m.group(0)), text, flags=re.IGNORECASE)


def redacted_error(error: dict[str, Any], names: Iterable[str] = ()) -> dict[str, Any]:
    """An OpenAI-style error object as a record keeps it: file names redacted from its text."""
    names = list(names)
    return {key: redact_file_names(value, names) if isinstance(value, str) else value
            for key, value in error.items()}


@dataclass(frozen=True)
class AuditRecord:
    """One appended record.

    Attributes:
        seq: position in the chain, 1-based, without gaps.
        id: the record id (for answers, the chat completion id clients saw).
        kind: "answer", "review", "rejected" (refused request) or "error" (engine failure).
        created: ISO 8601 UTC time of the append.
        parent: for reviews, the answer's id.
        body: the record's content.
        prev_hash: the previous record's hash (zeros for the first).
        hash: sha256 over prev_hash and the canonical record.
    """

    seq: int
    id: str
    kind: str
    created: str
    parent: str | None
    body: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_hash(prev_hash: str, seq: int, record_id: str, kind: str, created: str,
                parent: str | None, body_json: str) -> str:
    """The chain hash of one record; ``body_json`` is the body's canonical JSON."""
    head = canonical_json({"seq": seq, "id": record_id, "kind": kind, "created": created,
                           "parent": parent})
    return sha256_hex(f"{prev_hash}\n{head}\n{body_json}")


@dataclass
class VerifyReport:
    """What ``verify`` found: ok when ``problems`` is empty."""

    records: int = 0
    head: str = GENESIS_HASH
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditStore(Protocol):
    """Append-only storage. SQLite is built in; a shared database implements the same."""

    def append(self, kind: str, body: dict[str, Any], *, record_id: str | None = None,
               parent: str | None = None) -> AuditRecord:
        """Append durably (on disk when this returns) and return the chained record."""
        ...

    def get(self, record_id: str) -> AuditRecord | None: ...

    def records(
        self, *, kind: str | None = None, after_seq: int = 0, limit: int | None = None,
        newest_first: bool = False,
    ) -> Iterator[AuditRecord]: ...

    def children(self, record_id: str) -> list[AuditRecord]:
        """Records whose parent is ``record_id`` (the reviews of an answer)."""
        ...

    def count(self, kind: str | None = None) -> int: ...

    def put_blob(self, data: bytes, mime: str) -> str:
        """Store an opted-in input by content hash; returns the sha256."""
        ...

    def get_blob(self, sha256: str) -> tuple[bytes, str] | None: ...

    def verify(self) -> VerifyReport: ...

    def close(self) -> None: ...


def add_review(store: AuditStore, answer_id: str, verdict: str, *, correction: str | None = None,
               note: str | None = None, reviewer: str | None = None,
               user: str | None = None) -> AuditRecord:
    """Check a review and append it, linked to its answer record.

    Raises:
        InputError: no answer with that id, an unknown verdict, or "correct" without corrected
            text.
    """
    answer = store.get(answer_id)
    if answer is None or answer.kind != "answer":
        raise InputError(f"no answer record '{answer_id}'", "see `medgem audit list`")
    if verdict not in VERDICTS:
        raise InputError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if verdict == "correct" and not (correction or "").strip():
        raise InputError("a correction needs the corrected text", "write the corrected answer")
    body = {"verdict": verdict,
            "correction": ((correction or "").strip() or None) if verdict == "correct" else None,
            "note": (note or "").strip() or None, "reviewer": (reviewer or "").strip() or None,
            "user": user}
    return store.append("review", body, parent=answer_id)
