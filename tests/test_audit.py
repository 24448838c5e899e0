"""The audit store: append-only, hash-chained, durable; reviews; the `medgem audit` command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medgem.audit import add_review, canonical_json, open_store, sha256_hex
from medgem.audit.records import GENESIS_HASH, record_hash
from medgem.errors import InputError


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite"


def _answer(n: int = 0) -> dict[str, object]:
    return {"user": "alice", "output": f"answer {n}", "usage": {"prompt_tokens": 3, "completion_tokens": n}}


def _tamper(db: Path, sql: str, *params: object) -> None:
    """What an attacker with file access does: drop the guard triggers, then edit."""
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER IF EXISTS records_no_update")
    con.execute("DROP TRIGGER IF EXISTS records_no_delete")
    con.execute(sql, params)
    con.commit()
    con.close()


def test_hash_covers_previous_hash_and_canonical_record() -> None:
    body = {"b": 1, "a": "é"}
    assert canonical_json(body) == '{"a":"é","b":1}'
    expected = sha256_hex(
        GENESIS_HASH + "\n" + '{"created":"t","id":"x","kind":"answer","parent":null,"seq":1}' + "\n" + '{"a":"é","b":1}'
    )
    assert record_hash(GENESIS_HASH, 1, "x", "answer", "t", None, canonical_json(body)) == expected


def test_append_chains_records_and_verifies(db: Path) -> None:
    store = open_store(db)
    first = store.append("answer", _answer(1), record_id="a1")
    second = store.append("answer", _answer(2), record_id="a2")
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert [r.id for r in store.records()] == ["a1", "a2"]
    assert store.get("a2") == second
    report = store.verify()
    assert report.ok and report.records == 2 and report.head == second.hash


def test_store_is_wal_and_fully_synchronous(db: Path) -> None:
    store = open_store(db)
    con = store._db  # type: ignore[attr-defined]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sql_updates_and_deletes_are_refused(db: Path) -> None:
    store = open_store(db)
    store.append("answer", _answer(), record_id="a1")
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("UPDATE records SET body = '{}' WHERE id = 'a1'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM records")


def test_verify_finds_an_edited_record(db: Path) -> None:
    store = open_store(db)
    for n in range(3):
        store.append("answer", _answer(n), record_id=f"a{n}")
    store.close()
    _tamper(db, "UPDATE records SET body = ? WHERE id = 'a1'", canonical_json(_answer(99)))
    report = open_store(db).verify()
    assert not report.ok
    assert any("'a1'" in p and "edited" in p for p in report.problems)


def test_verify_finds_a_deleted_record(db: Path) -> None:
    store = open_store(db)
    for n in range(3):
        store.append("answer", _answer(n), record_id=f"a{n}")
    store.close()
    _tamper(db, "DELETE FROM records WHERE id = 'a1'")
    problems = open_store(db).verify().problems
    assert any("missing" in p for p in problems) and any("does not link" in p for p in problems)


def test_verify_finds_the_last_record_deleted(db: Path) -> None:
    store = open_store(db)
    for n in range(3):
        store.append("answer", _answer(n), record_id=f"a{n}")
    store.close()
    _tamper(db, "DELETE FROM records WHERE id = 'a2'")
    assert any("deleted" in p for p in open_store(db).verify().problems)


def test_verify_finds_a_rehashed_edit(db: Path) -> None:
    """Editing a record and recomputing its own hash still breaks the next link."""
    store = open_store(db)
    a = store.append("answer", _answer(0), record_id="a0")
    store.append("answer", _answer(1), record_id="a1")
    store.close()
    body = canonical_json(_answer(42))
    forged = record_hash(a.prev_hash, 1, "a0", "answer", a.created, None, body)
    _tamper(db, "UPDATE records SET body = ?, hash = ? WHERE id = 'a0'", body, forged)
    assert any("does not link" in p for p in open_store(db).verify().problems)


def test_reviews_are_appended_and_linked(db: Path) -> None:
    store = open_store(db)
    store.append("answer", _answer(), record_id="a1")
    add_review(store, "a1", "accept", reviewer="Dr A")
    add_review(store, "a1", "correct", correction="Small left effusion.", note="missed", reviewer="Dr B")
    add_review(store, "a1", "reject", reviewer="Dr C")
    reviews = store.children("a1")
    assert [r.body["verdict"] for r in reviews] == ["accept", "correct", "reject"]
    assert reviews[1].body["correction"] == "Small left effusion." and reviews[1].body["note"] == "missed"
    assert all(r.parent == "a1" and r.kind == "review" for r in reviews)
    assert store.get("a1").body == _answer()  # type: ignore[union-attr]  # the answer is untouched
    assert store.verify().ok


@pytest.mark.parametrize(("answer_id", "verdict", "correction", "message"), [
    ("missing", "accept", None, "no answer record"),
    ("a1", "maybe", None, "verdict must be"),
    ("a1", "correct", "  ", "needs the corrected text"),
])
def test_bad_reviews_are_refused(db: Path, answer_id: str, verdict: str, correction: str | None, message: str) -> None:
    store = open_store(db)
    store.append("answer", _answer(), record_id="a1")
    with pytest.raises(InputError, match=message):
        add_review(store, answer_id, verdict, correction=correction)
    assert store.count() == 1


def test_reopening_keeps_the_schema_and_the_chain(db: Path) -> None:
    store = open_store(db)
    store.append("answer", _answer(), record_id="a1")
    store.close()
    again = open_store(db)
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == 4  # type: ignore[attr-defined]
    again.append("answer", _answer(), record_id="a2")
    assert again.verify().ok and again.count() == 2


def test_concurrent_appends_from_threads_and_processes_keep_one_chain(db: Path) -> None:
    store = open_store(db)
    code = (
        "import sys; from medgem.audit import open_store; s = open_store(sys.argv[1])\n"
        "for i in range(20): s.append('answer', {'n': i, 'by': 'process'})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(db)])
    threads = [threading.Thread(target=lambda: [store.append("answer", {"by": "thread"}) for _ in range(10)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert process.wait(60) == 0
    report = store.verify()
    assert report.ok and report.records == 60


def test_blobs_are_content_addressed_and_verified(db: Path) -> None:
    store = open_store(db)
    digest = store.put_blob(b"pixels", "image/png")
    assert digest == sha256_hex(b"pixels") and store.get_blob(digest) == (b"pixels", "image/png")
    store.close()
    con = sqlite3.connect(db)
    con.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (b"other", digest))
    con.commit()
    assert any("stored input" in p for p in open_store(db).verify().problems)


def test_unknown_database_urls_name_what_to_do() -> None:
    with pytest.raises(InputError, match="AuditStore"):
        open_store("postgresql://db/medgem")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *args], capture_output=True, text=True, timeout=120)


def test_audit_command_lists_shows_reviews_exports_and_verifies(db: Path, tmp_path: Path) -> None:
    store = open_store(db)
    store.append("answer", {"user": "alice", "model": {"id": "m"}, "finish_reason": "stop",
                            "usage": {"completion_tokens": 5}}, record_id="chatcmpl-1")
    store.close()
    reviewed = _cli("audit", "--db", str(db), "review", "chatcmpl-1", "correct", "--correction", "Fixed.",
                    "--reviewer", "Dr Who")
    assert reviewed.returncode == 0, reviewed.stderr
    listing = _cli("audit", "--db", str(db), "list")
    assert listing.returncode == 0 and "chatcmpl-1" in listing.stdout and "correct of chatcmpl-1" in listing.stdout
    shown = json.loads(_cli("audit", "--db", str(db), "show", "chatcmpl-1").stdout)
    assert shown["reviews"][0]["body"]["correction"] == "Fixed."
    out = tmp_path / "export.jsonl"
    assert _cli("audit", "--db", str(db), "export", "-o", str(out)).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["answer", "review"] and lines[1]["prev_hash"] == lines[0]["hash"]
    ok = _cli("audit", "--db", str(db), "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 2 records")
    _tamper(db, "UPDATE records SET body = '{}' WHERE id = 'chatcmpl-1'")
    bad = _cli("audit", "--db", str(db), "verify")
    assert bad.returncode == 1 and "edited" in bad.stderr
    missing = _cli("audit", "--db", str(db), "show", "nope")
    assert missing.returncode != 0 and "no audit record" in missing.stderr


def test_a_path_that_cannot_hold_a_store_is_one_input_error(tmp_path: Path) -> None:
    """--audit-db under a file, in a folder that cannot exist, or on a file that is not a
    database: one line naming the path and the flag, not an OSError or sqlite3 traceback."""
    a_file = tmp_path / "f"
    a_file.write_text("")
    not_a_db = tmp_path / "notdb.sqlite"
    not_a_db.write_text("garbage " * 200)
    for path in (a_file / "x.sqlite", Path("/proc/nope/x.sqlite"), not_a_db):
        with pytest.raises(InputError, match=r"cannot open the audit store at .* --audit-db"):
            open_store(path)
    assert not_a_db.read_text().startswith("garbage")  # left as it was
