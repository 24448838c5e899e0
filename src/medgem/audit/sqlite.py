"""The built-in audit store: one SQLite file, WAL journal, synchronous=FULL, append-only.

Every append is its own ``BEGIN IMMEDIATE`` transaction that reads the chain head and writes
the next record, so several processes (the server, ``medgem audit review``) can share a file.
When ``append`` returns, the record is on disk: a crash after that cannot lose it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medgem.audit.records import (
    GENESIS_HASH,
    AuditRecord,
    VerifyReport,
    canonical_json,
    record_hash,
    sha256_hex,
    utc_now,
)

# Ordered migrations; PRAGMA user_version says how many have run. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE records (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        created TEXT NOT NULL,
        parent TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX records_kind ON records(kind);
    CREATE INDEX records_parent ON records(parent);
    """,
    """
    CREATE TRIGGER records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    """,
    """
    CREATE TABLE chain_head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    INSERT INTO chain_head VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
    """,
    """
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        mime TEXT NOT NULL,
        data BLOB NOT NULL
    );
    """,
)
_COLUMNS = "seq, id, kind, created, parent, body, prev_hash, hash"


class SQLiteAuditStore:
    """An :class:`~medgem.audit.records.AuditStore` in one SQLite file.

    Args:
        path: the database file (created with its folder), or ":memory:".
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            self._db.execute(f"PRAGMA {pragma}")
        self._migrate()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # --- writing -----------------------------------------------------------------------------

    def append(self, kind: str, body: dict[str, Any], *, record_id: str | None = None,
               parent: str | None = None) -> AuditRecord:
        """Append one record to the chain; durable when this returns."""
        record_id = record_id or f"{kind}-{uuid.uuid4().hex}"
        body_json = canonical_json(body)
        with self._transaction() as db:
            head_seq, prev = db.execute("SELECT seq, hash FROM chain_head").fetchone()
            seq, created = head_seq + 1, utc_now()
            digest = record_hash(prev, seq, record_id, kind, created, parent, body_json)
            db.execute(f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq, record_id, kind, created, parent, body_json, prev, digest))
            db.execute("UPDATE chain_head SET seq = ?, hash = ?", (seq, digest))
        return AuditRecord(seq, record_id, kind, created, parent, json.loads(body_json), prev, digest)

    def put_blob(self, data: bytes, mime: str) -> str:
        digest = sha256_hex(data)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO blobs (sha256, mime, data) VALUES (?, ?, ?)",
                             (digest, mime, data))
        return digest

    # --- reading -----------------------------------------------------------------------------

    def get(self, record_id: str) -> AuditRecord | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE id = ?", (record_id,))
        return _record(rows[0]) if rows else None

    def records(self, *, kind: str | None = None, after_seq: int = 0, limit: int | None = None,
                newest_first: bool = False) -> Iterator[AuditRecord]:
        sql = f"SELECT {_COLUMNS} FROM records WHERE seq > ?"
        params: list[Any] = [after_seq]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        yield from map(_record, self._query(sql, tuple(params)))

    def children(self, record_id: str) -> list[AuditRecord]:
        rows = self._query(f"SELECT {_COLUMNS} FROM records WHERE parent = ? ORDER BY seq", (record_id,))
        return [_record(row) for row in rows]

    def count(self, kind: str | None = None) -> int:
        where, params = (" WHERE kind = ?", (kind,)) if kind else ("", ())
        return int(self._query("SELECT COUNT(*) FROM records" + where, params)[0][0])

    def unfinished(self) -> list[AuditRecord]:
        """The "accepted" records that no record names as its parent (no outcome yet)."""
        rows = self._query(f"SELECT {_COLUMNS} FROM records AS a WHERE kind = 'accepted' AND NOT EXISTS "
                           "(SELECT 1 FROM records AS c WHERE c.parent = a.id) ORDER BY seq", ())
        return [_record(row) for row in rows]

    def get_blob(self, sha256: str) -> tuple[bytes, str] | None:
        rows = self._query("SELECT data, mime FROM blobs WHERE sha256 = ?", (sha256,))
        return (bytes(rows[0][0]), str(rows[0][1])) if rows else None

    def verify(self) -> VerifyReport:
        """Walk the chain: recompute every hash, check links, gaps, the head and blobs."""
        report = VerifyReport()
        prev = GENESIS_HASH
        expected_seq = 1
        for row in self._query(f"SELECT {_COLUMNS} FROM records ORDER BY seq", ()):
            seq, record_id, kind, created, parent, body_json, prev_hash, digest = row
            report.records += 1
            if seq != expected_seq:
                report.problems.append(
                    f"records {expected_seq}..{seq - 1} are missing (deleted) before '{record_id}'"
                )
            if prev_hash != prev:
                report.problems.append(f"record {seq} ('{record_id}') does not link to the one before it")
            try:
                canonical = canonical_json(json.loads(body_json))
            except ValueError:
                canonical = None
            recomputed = record_hash(prev_hash, seq, record_id, kind, created, parent, body_json)
            if canonical != body_json or recomputed != digest:
                report.problems.append(f"record {seq} ('{record_id}') was edited: its hash does not match")
            prev = digest
            expected_seq = seq + 1
        head = self._query("SELECT seq, hash FROM chain_head", ())
        if head and (head[0][0] != expected_seq - 1 or head[0][1] != prev):
            report.problems.append(
                f"the chain head says {head[0][0]} records but {expected_seq - 1} end the chain:"
                " records at the end were deleted"
            )
        for sha, data in self._query("SELECT sha256, data FROM blobs", ()):
            if sha256_hex(bytes(data)) != sha:
                report.problems.append(f"stored input {sha[:12]} was edited")
        report.head = prev
        return report

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())


def _record(row: tuple[Any, ...]) -> AuditRecord:
    seq, record_id, kind, created, parent, body_json, prev_hash, digest = row
    return AuditRecord(seq, record_id, kind, created, parent, json.loads(body_json), prev_hash, digest)


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    current = ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
