"""The README's audit example, as printed: `medgem serve`, one request, then `medgem audit verify`
without --db reads the store the server wrote to; a store that does not exist or holds nothing
is said to, not verified as "OK: 0 records"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import REPO


def _env(data_home: Path) -> dict[str, str]:
    """A user with no $MEDGEM_AUDIT_DB: the default store lives under $XDG_DATA_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "MEDGEM_AUDIT_DB"}
    return env | {"XDG_DATA_HOME": str(data_home)}


def _medgem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_audit_verify_reads_the_store_serve_wrote(tiny_text_checkpoint: Path,
                                                  tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    store = tmp_path / "data" / "medgem" / "audit.sqlite"
    before = _medgem(env, "audit", "verify")
    assert before.returncode == 1 and before.stderr.startswith(f"medgem: error: no audit store at {store}")

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(tiny_text_checkpoint),
         "--engine", "hf", "--port", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.5)
        body = json.dumps({"model": "medgem-test-text", "max_tokens": 3,
                           "messages": [{"role": "user", "content": "What is pneumonia?"}]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                         body.encode(), {"content-type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        assert answer["medgem"]["audit_id"]
    finally:
        server.terminate()
        server.wait(timeout=60)

    verified = _medgem(env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK: 2 records, head ")  # accepted, answered and f"({store})" in verified.stdout


def test_a_mistyped_or_empty_store_is_named_not_verified(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    typo = tmp_path / "medgem-audit.db"
    missing = _medgem(env, "audit", "--db", str(typo), "verify")
    assert missing.returncode == 1 and f"no audit store at {typo}" in missing.stderr
    assert "OK" not in missing.stdout and not typo.exists()  # reading made no empty store

    from medgem.audit import open_store

    open_store(typo).close()
    empty = _medgem(env, "audit", "verify", "--db", str(typo))
    assert empty.returncode == 1 and "holds no records" in empty.stderr and empty.stdout == ""


def test_export_to_a_path_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    """`audit export -o` onto a folder, or under a file, was "unexpected error:
    NotADirectoryError / IsADirectoryError"; it is one line naming the path."""
    from medgem.audit import open_store

    store_path = tmp_path / "audit.sqlite"
    store = open_store(store_path)
    store.append("answer", {"user": "alice", "output": "an answer"})
    store.close()
    (tmp_path / "notes.txt").write_text("a file")
    env = _env(tmp_path / "data")
    for target in (tmp_path, tmp_path / "notes.txt" / "export.jsonl"):
        result = _medgem(env, "audit", "--db", str(store_path), "export", "-o", str(target))
        assert result.returncode == 1, result.stderr
        assert "unexpected error" not in result.stderr, result.stderr
        assert f"cannot write the export to {target}" in result.stderr, result.stderr
    written = _medgem(env, "audit", "--db", str(store_path), "export", "-o", str(tmp_path / "out.jsonl"))
    assert written.returncode == 0 and "an answer" in (tmp_path / "out.jsonl").read_text()


def test_a_review_by_a_blank_reviewer_is_refused(tmp_path: Path) -> None:
    """`--reviewer "  "` recorded a review by nobody (send-back then named the reviewer
    'None'); it is refused as the flag's error and nothing is recorded."""
    from medgem.audit import open_store

    store_path = tmp_path / "audit.sqlite"
    store = open_store(store_path)
    answer = store.append("answer", {"user": "alice", "output": "an answer"}).id
    store.close()
    env = _env(tmp_path / "data")
    blank = _medgem(env, "audit", "--db", str(store_path), "review", answer, "accept", "--reviewer", "  ")
    assert blank.returncode == 2 and "argument --reviewer: give the reviewer's name" in blank.stderr
    listed = _medgem(env, "audit", "--db", str(store_path), "list", "--kind", "review")
    assert "review-" not in listed.stdout, listed.stdout
    named = _medgem(env, "audit", "--db", str(store_path), "review", answer, "accept", "--reviewer", " Jane Roe ")
    assert named.returncode == 0, named.stderr
    assert "by Jane Roe" in _medgem(env, "audit", "--db", str(store_path), "list", "--kind", "review").stdout
