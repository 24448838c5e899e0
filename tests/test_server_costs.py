"""What a request costs the server, and what the server says about it (issue: hardening):
Retry-After from measured service times, previews in a bounded pool, a client that leaves
stops the work before the model, and a base checkpoint is not passed off as MedGemma.

Real HTTP on 127.0.0.1, the tiny real checkpoint on the transformers engine, real sockets.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medgem.api import MedGemma
from medgem.audit import AuditStore, open_store
from medgem.errors import ClientDisconnectedError
from medgem.server.app import create_app
from medgem.server.server_config import ServerConfig
from test_server_helpers import audited, serve_in_thread

MODEL = "medgem-test-vlm"


@pytest.fixture(scope="module")
def vlm(tiny_vlm_checkpoint: Path) -> Iterator[MedGemma]:
    model = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False}, audit=False)
    yield model
    model.close()


def _png_url(side: int) -> str:
    """A ``side`` x ``side`` RGB PNG (a smooth pattern: small to send, costly to decode)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    plane = ((x * 7 + y * 3) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([plane, plane[::-1], plane.T], -1)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _raw_post(base: str, path: str, body: bytes) -> tuple[socket.socket, bytes]:
    """A socket with the request line and headers of a JSON POST sent; returns it and the body."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head)
    return sock, body


def _response_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return int(data.split(b" ", 2)[1])


def _gauge(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


# --- Retry-After ----------------------------------------------------------------------------


def _probe_while_running(base: str, max_tokens: int) -> tuple[int, float]:
    """Start a streamed answer of ``max_tokens``; once it runs, a second request must be
    refused. Returns (that 429's Retry-After, the running answer's measured seconds)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe a chest X-ray."}],
            "max_tokens": max_tokens, "stream": True}
    final: dict[str, Any] = {}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the engine took it
        busy = httpx.post(base + "/v1/chat/completions", json=body | {"stream": False}, timeout=30)
        assert busy.status_code == 429, busy.text
        assert busy.json()["error"]["code"] == "queue_full"
        retry_after = int(busy.headers["retry-after"])
        for line in lines:
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                final = chunk.get("medgem") or final
    assert final, "the answer did not complete"
    return retry_after, final["queue_s"] + final["total_s"]


def test_retry_after_grows_with_the_measured_service_time(vlm: MedGemma) -> None:
    app = create_app(ServerConfig(max_queue=0, max_new_tokens=2000), audited(vlm, open_store(":memory:")))
    with serve_in_thread(app) as base:
        # ~4 s on a quiet 2-core machine: long enough that the old estimate (an average that
        # started at 1 s and moved a fifth of the way) fell short of the measured time.
        first, took = _probe_while_running(base, 800)  # nothing measured yet: the least wait
        second, _ = _probe_while_running(base, 800)  # now the server knows answers take `took`
    assert second >= int(took) and second > first


# --- previews -------------------------------------------------------------------------------


def test_previews_run_in_a_bounded_pool_and_the_rest_get_429(vlm: MedGemma) -> None:
    app = create_app(ServerConfig(max_previews=2), audited(vlm, open_store(":memory:")))
    body = json.dumps({"image": _png_url(2048)}).encode()
    with serve_in_thread(app) as base:
        # Two previews under way (their uploads half sent); two more arrive meanwhile.
        held = [_raw_post(base, "/api/preview", body) for _ in range(2)]
        for sock, data in held:
            sock.sendall(data[: len(data) // 2])
        deadline = time.monotonic() + 30
        while _gauge(base, "medgem_previews_running") < 2:
            assert time.monotonic() < deadline, "the two previews never started"
            time.sleep(0.05)
        refused = [httpx.post(base + "/api/preview", content=body, timeout=60,
                              headers={"content-type": "application/json"}) for _ in range(2)]
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "previews_busy"
            assert int(response.headers["retry-after"]) >= 1
        for sock, data in held:  # the two admitted ones finish and answer
            sock.sendall(data[len(data) // 2:])
            assert _response_status(sock) == 200
            sock.close()
        again = httpx.post(base + "/api/preview", content=body, timeout=60,
                           headers={"content-type": "application/json"})
        assert again.status_code == 200 and again.json()["count"] == 1
        assert _gauge(base, "medgem_previews_running") == 0


# --- a client that leaves -------------------------------------------------------------------


def _wait_for_record(store: AuditStore, timeout: float = 120) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not store.count():
        assert time.monotonic() < deadline, "no audit record appeared"
        time.sleep(0.1)
    return list(store.records())


def test_a_client_that_leaves_while_its_images_are_read_never_reaches_the_model(
        vlm: MedGemma, tmp_path: Path) -> None:
    store = open_store(tmp_path / "audit.sqlite")
    app = create_app(ServerConfig(), audited(vlm, store))
    image = {"type": "image_url", "image_url": {"url": _png_url(4096)}}  # ~0.3 s each to read
    body = json.dumps({"model": MODEL, "max_tokens": 200, "messages": [
        {"role": "user", "content": [image] * 8 + [{"type": "text", "text": "Compare them."}]}]}).encode()
    with serve_in_thread(app) as base:
        sock, data = _raw_post(base, "/v1/chat/completions", body)
        sock.sendall(data)
        time.sleep(1.0)  # the body is in; the server is reading the eight images
        sock.close()
        records = _wait_for_record(store)
        ok = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "next"}]})
        assert ok.status_code == 200  # the server goes on
    assert [r.kind for r in records] == ["rejected"]
    error = records[0].body["error"]
    assert error["code"] == "client_disconnected" and "inputs" in error["message"]
    assert store.count("answer") == 1  # only the follow-up: the left request never ran


def test_a_request_cancelled_before_prefill_is_recorded_and_not_run(vlm: MedGemma, tmp_path: Path) -> None:
    from medgem.audit.trail import AuditTrail

    store = open_store(tmp_path / "audit.sqlite")
    model = MedGemma(vlm.engine, audit=AuditTrail(store, surface="test"))
    request = model.request("Describe the image.", max_new_tokens=50)
    cancel = threading.Event()
    cancel.set()  # the client left while the engine encoded the prompt
    with pytest.raises(ClientDisconnectedError, match="before prefill"):
        model.generate(request, cancel)
    assert store.count("rejected") == 1 and store.count("answer") == 0


# --- a checkpoint that is not MedGemma --------------------------------------------------------


def test_a_base_gguf_is_not_served_as_a_thinking_medgemma(llamacpp_runs: None) -> None:
    from medgem.demo.build import demo_gguf_path

    model = MedGemma.load(demo_gguf_path(), engine="llamacpp", options={"n_ctx": 512, "progress": False}, audit=False)
    try:
        with serve_in_thread(create_app(ServerConfig(), audited(model, open_store(":memory:")))) as base:
            card = httpx.get(base + "/v1/models").json()["data"][0]["medgem"]
            answer = httpx.post(base + "/v1/chat/completions", timeout=120, json={
                "model": card["id"], "max_tokens": 4,
                "messages": [{"role": "user", "content": "What is a pulse?"}]}).json()
            info = httpx.get(base + "/api/info").json()
    finally:
        model.close()
    assert card["variant"] is None and card["medgemma"] is False and card["thinking"] is False
    assert card["label"].startswith("NOT MEDGEMMA")
    assert card["caveat"].startswith("This model is not a recognised MedGemma")
    assert "MedGemma output" not in card["caveat"] and "clinical use" in card["caveat"]
    extra = answer["medgem"]
    assert extra["label"] == card["label"] and extra["caveat"] == card["caveat"]
    assert info["thinking"] is False and info["label"] == card["label"]
