"""The server under load: a bounded queue (429), cancelling on disconnect, SIGTERM drains,
and SIGKILL mid-load loses no acknowledged audit record."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from medgem.api import MedGemma
from medgem.audit import open_store
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import (
    SCRIPTED_ID,
    ScriptedEngine,
    audited,
    serve_in_process,
    serve_in_thread,
)

LONG = " ".join(f"word{i}" for i in range(200))  # 200 tokens of scripted answer


def _body(stream: bool = False, text: str = "hi") -> dict[str, object]:
    return {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": text}], "stream": stream}


def _stream(base: str, results: list[tuple[int, str | None]], timeout: float = 60) -> None:
    """One streaming request; records (status, id) when the stream completed with [DONE]."""
    with httpx.stream("POST", base + "/v1/chat/completions", json=_body(True), timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            results.append((response.status_code, None))
            return
        record_id, done = None, False
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                record_id = json.loads(line[6:]).get("id", record_id)
        results.append((200, record_id if done else None))


def test_full_queue_answers_429_with_retry_after() -> None:
    engine = ScriptedEngine(LONG, delay=0.01)
    store = open_store(":memory:")
    app = create_app(ServerConfig(max_queue=1), audited(MedGemma(engine), store))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        results: list[tuple[int, str | None]] = []
        threads = [threading.Thread(target=_stream, args=(base, results)) for _ in range(2)]
        for thread in threads:
            thread.start()
            time.sleep(0.3)  # the first runs, the second waits
        busy = httpx.post(base + "/v1/chat/completions", json=_body())
        assert busy.status_code == 429
        assert busy.json()["error"]["code"] == "queue_full" and int(busy.headers["retry-after"]) >= 1
        for thread in threads:
            thread.join()
        assert [status for status, _ in results] == [200, 200]
        assert httpx.post(base + "/v1/chat/completions", json=_body()).status_code == 200
    assert store.count("answer") == 3 and store.count("rejected") == 1


def test_disconnecting_mid_stream_frees_the_engine() -> None:
    engine = ScriptedEngine(LONG, delay=0.05)  # 10 s if nobody stops it
    store = open_store(":memory:")
    app = create_app(ServerConfig(), audited(MedGemma(engine), store))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        started = time.monotonic()
        with httpx.stream("POST", base + "/v1/chat/completions", json=_body(True)) as response:
            lines = response.iter_lines()
            record_id = None
            for _ in range(5):
                line = next(lines)
                while not line.startswith("data: "):
                    line = next(lines)
                record_id = json.loads(line[6:])["id"]
        # The client is gone; the engine stops and the next request runs at once.
        ok = httpx.post(base + "/v1/chat/completions", json=_body(text="next") | {"max_tokens": 3}, timeout=30)
        assert ok.status_code == 200 and time.monotonic() - started < 8
    assert engine.cancelled == 1
    record = store.get(record_id)  # type: ignore[arg-type]
    assert record is not None and record.body["finish_reason"] == "cancelled"
    assert 0 < record.body["usage"]["completion_tokens"] < 200


def test_disconnecting_while_queued_never_runs_the_request() -> None:
    engine = ScriptedEngine(LONG, delay=0.01)
    app = create_app(ServerConfig(max_queue=4), audited(MedGemma(engine), open_store(":memory:")))  # type: ignore[arg-type]
    with serve_in_thread(app) as base:
        warm_up = engine.calls  # the server's own request at start-up
        results: list[tuple[int, str | None]] = []
        first = threading.Thread(target=_stream, args=(base, results))
        first.start()
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/chat/completions", json=_body(), timeout=0.5)
        first.join()
        time.sleep(1.0)
        assert engine.calls == warm_up + 1  # the abandoned request was dropped, not run


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    with serve_in_process(audit, delay=0.02, words=60) as (process, base):  # ~1.2 s per answer
        results: list[tuple[int, str | None]] = []
        body = {"model": SCRIPTED_ID, "messages": [{"role": "user", "content": "q"}]}
        threads = [threading.Thread(target=lambda: results.append(_post(base, body))) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.6)  # one runs, two wait in the queue
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no new connections while draining
            httpx.post(base + "/v1/chat/completions", json=body, timeout=5)
        for thread in threads:
            thread.join()
        # uvicorn re-raises SIGTERM after a clean shutdown, so the exit is by that signal.
        assert process.wait(60) in (0, -signal.SIGTERM)
    assert [status for status, _ in results] == [200, 200, 200]
    store = open_store(audit)
    for _, record_id in results:
        record = store.get(record_id)  # type: ignore[arg-type]
        assert record is not None and record.body["finish_reason"] == "stop"
        assert record.body["usage"]["completion_tokens"] == 63
    # each request: its accept record, then its answer (the accept record its parent)
    assert store.count("answer") == 3 and store.count("accepted") == 3 and store.verify().ok
    assert store.unfinished() == []  # type: ignore[attr-defined]


def _post(base: str, body: dict[str, object]) -> tuple[int, str | None]:
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    return response.status_code, response.json().get("id")


def test_sigkill_mid_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(base: str) -> None:
        while not stop.is_set():
            results: list[tuple[int, str | None]] = []
            try:
                _stream(base, results, timeout=10)
            except httpx.HTTPError:
                return  # the server died under us: that answer was never acknowledged
            if results and results[0][1]:
                with lock:
                    acknowledged.append(results[0][1])

    with serve_in_process(audit, delay=0.002) as (process, base):
        threads = [threading.Thread(target=client, args=(base,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(acknowledged) >= 20
    store = open_store(audit)
    missing = [record_id for record_id in acknowledged if store.get(record_id) is None]
    assert missing == []
    assert store.verify().ok


def test_a_warm_up_runs_before_serving_and_leaves_no_trace() -> None:
    engine = ScriptedEngine()
    store = open_store(":memory:")
    app = create_app(ServerConfig(), audited(MedGemma(engine), store))  # type: ignore[arg-type]
    assert app.state.serving.health().status == "warming" and engine.calls == 0
    with serve_in_thread(app) as base:
        assert engine.calls == 1  # one tiny request, before the first user's
        assert httpx.get(base + "/healthz").json()["status"] == "ok"
        metrics = httpx.get(base + "/metrics").text
    assert store.count() == 0  # nobody's request: no audit record
    assert "medgem_requests_total{" not in metrics and 'medgem_tokens_total{kind="completion"} 0.0' in metrics
