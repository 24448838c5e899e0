"""Hostile and careless clients against `medgem serve` (the tiny real VLM on the transformers
engine) on 127.0.0.1 (issue 25: accountable under stress): what they send costs a bounded
amount of the server's memory and is refused with an OpenAI-style 4xx, and the server keeps
serving."""

from __future__ import annotations

import base64
import io
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from test_server_helpers import free_port, png_data_url, wait_healthy

MODEL = "medgem-test-vlm"
# What one refused body may add to the server's peak RSS: far below what decoding the images
# (or building 100,000 nested lists) takes, far above the noise of one request.
BOUNDED_GROWTH = 150 * 1024 * 1024


def serve_command(checkpoint: Path, audit: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medgem", "serve", "--model", str(checkpoint), "--engine", "hf",
            "--device", "cpu", "--port", str(port), "--audit-db", str(audit), *extra]


def serve_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "MEDGEM_API_KEYS": str(folder / "no-keys.json"), "MEDGEM_CACHE": str(folder / "cache"),
            "MEDGEM_CONFIG": "", "XDG_CONFIG_HOME": str(folder / "xdg")}


@pytest.fixture(scope="module")
def served(tiny_vlm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    folder = tmp_path_factory.mktemp("stress")
    port = free_port()
    audit = folder / "audit.sqlite"
    process = subprocess.Popen(serve_command(tiny_vlm_checkpoint, audit, port, "--max-images", "4",
                                             "--max-total-pixels", "50000000", "--slice-limit", "5"),
                               env=serve_env(folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, timeout=180)
        yield process, base, audit
    finally:
        _stop(process)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _still_serving(base: str) -> None:
    ok = httpx.post(base + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "still there?"}]})
    assert ok.status_code == 200, ok.text


def test_a_body_nested_100000_levels_deep_is_a_400_at_bounded_cost(
        served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, base, _ = served
    before = peak_rss(process.pid)
    for body in (b"[" * 100_000 + b"]" * 100_000,
                 b'{"model": "m", "messages": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001):
        response = httpx.post(base + "/v1/chat/completions", content=body, timeout=60,
                              headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_json" and "nests more than 64 levels" in error["message"]
    page = httpx.post(base + "/api/ask", content=b'{"question": ' + b"[" * 100_000, timeout=60)
    assert page.status_code == 400 and "nests" in page.json()["error"]["message"]
    # Brackets inside strings are text, not nesting.
    text = httpx.post(base + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "[" * 1000 + '\\"{'}]})
    assert text.status_code == 200, text.text
    assert peak_rss(process.pid) - before < BOUNDED_GROWTH
    _still_serving(base)


def big_png_url(side: int = 4000) -> str:
    """A real, decodable side x side PNG (48 MB as RGB pixels) of a few kilobytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 90, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def declared_png_url(width: int, height: int) -> str:
    """A PNG whose header declares width x height over one tiny (truncated) data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _images(urls: list[str]) -> list[dict[str, object]]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                         {"type": "text", "text": "Describe."}]}]


def test_40_images_are_counted_before_one_is_decoded(served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, base, _ = served
    url = big_png_url()
    before = peak_rss(process.pid)
    response = httpx.post(base + "/v1/chat/completions", timeout=120,
                          json={"model": MODEL, "max_tokens": 2, "messages": _images([url] * 40)})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("40 images sent, the limit is 4")
    # Decoding them would take 40 x 48 MB; refusing them takes the body's few hundred kB.
    assert peak_rss(process.pid) - before < BOUNDED_GROWTH
    _still_serving(base)


def test_image_headers_are_checked_together_before_any_pixel(
        served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, base, _ = served
    before = peak_rss(process.pid)
    # Four real 4000x4000 pictures: 64 M pixels together, over this server's 50 M.
    response = httpx.post(base + "/v1/chat/completions", timeout=120,
                          json={"model": MODEL, "max_tokens": 2, "messages": _images([big_png_url()] * 4)})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "declare more than 50,000,000 pixels together (by messages[0].content[3])" in message
    assert peak_rss(process.pid) - before < BOUNDED_GROWTH
    # One header declaring a bomb behind a valid first picture: refused by its header, named.
    bomb = httpx.post(base + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": _images([png_data_url(), declared_png_url(12000, 12000)])})
    assert bomb.status_code == 400
    assert bomb.json()["error"]["message"].startswith("messages[0].content[1] declares 12000x12000 pixels")
    # The web page's upload: the same header check.
    page = httpx.post(base + "/api/ask", timeout=120, json={
        "question": "What is it?", "image": declared_png_url(12000, 12000), "name": "x.png"})
    assert page.status_code == 400 and "x.png declares 12000x12000" in page.json()["error"]["message"]
    _still_serving(base)


def test_an_image_in_a_system_message_is_refused_with_a_reason(
        served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    _, base, _ = served
    response = httpx.post(base + "/v1/chat/completions", timeout=120, json={"model": MODEL, "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."},
                                       {"type": "image_url", "image_url": {"url": png_data_url()}}]},
        {"role": "user", "content": "Describe."}]})
    assert response.status_code == 400
    error = response.json()["error"]["message"]
    assert error.startswith("messages[0].content[1] is an image in a system message")


def _zip_url(files: int) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(files):
            archive.writestr(f"Doe^Jane/IM_{number:04d}.dcm", b"\x00" * 16)
    return "data:application/zip;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_an_upload_name_never_reaches_the_audit_store(served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    _, base, audit = served
    name = "Doe_Jane_MRN123456.zip"
    refused = httpx.post(base + "/api/ask", timeout=120, json={"question": "Any bleed?", "image": _zip_url(10), "name": name})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith(f"{name} holds 10 files, over the limit of 5")  # its own answer
    spaced = httpx.post(base + "/api/ask", timeout=120, json={"question": "Any bleed?", "image": _zip_url(10),
                                                               "name": "Doe Jane MRN123456.zip"})
    assert spaced.status_code == 400 and "Doe_Jane_MRN123456.zip holds" in spaced.json()["error"]["message"]
    answered = httpx.post(base + "/api/ask", timeout=120, json={
        "question": "What is it?", "image": png_data_url(), "name": "Doe_Jane_MRN123456.png", "max_tokens": 2})
    assert answered.status_code == 200 and "[DONE]" in answered.text
    stored = b"".join(path.read_bytes() for path in audit.parent.glob(audit.name + "*"))
    for secret in (b"Doe", b"Jane", b"MRN123456"):
        assert secret not in stored
    from medgem.audit import open_store
    from medgem.audit.records import file_name_fields

    store = open_store(audit)
    try:
        rejected = [r for r in store.records(kind="rejected") if r.body.get("endpoint") == "/api/ask"]
        messages = [r.body["error"]["message"] for r in rejected]
        assert any(m.startswith(f"file:{file_name_fields(name)['name_sha256'][:12]}.zip holds 10 files")
                   for m in messages), messages
        answers = [r for r in store.records(kind="answer") if r.body.get("endpoint") == "/api/ask"]
        image = next(entry for entry in answers[-1].body["inputs"] if entry["kind"] == "image")
        assert image["name_sha256"] == file_name_fields("Doe_Jane_MRN123456.png")["name_sha256"]
        assert image["extension"] == ".png"
    finally:
        store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *args], capture_output=True, text=True, timeout=120)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_sigkill_with_requests_accepted_leaves_every_one_in_the_audit(tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    import threading
    import time

    from medgem.audit import open_store

    accepted_n = 4
    audit = tmp_path / "audit.sqlite"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = serve_command(tiny_vlm_checkpoint, audit, port)
    process = subprocess.Popen(command, env=serve_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    body = {"model": MODEL, "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "Write a long report."}]}

    def client() -> None:
        try:
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as response:
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the server died under us

    try:
        wait_healthy(base, process, timeout=180)
        threads = [threading.Thread(target=client) for _ in range(accepted_n)]
        for thread in threads:
            thread.start()
        store = open_store(audit)
        deadline = time.monotonic() + 120
        while store.count("accepted") < accepted_n:  # one runs, three wait: all acknowledged
            assert time.monotonic() < deadline, "the requests were not accepted"
            time.sleep(0.05)
        process.kill()
        process.wait(30)
        for thread in threads:
            thread.join(60)
        store.close()
        assert _cli("audit", "--db", str(audit), "verify").returncode == 0
        restarted = subprocess.Popen(command, env=serve_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_healthy(base, restarted, timeout=180)  # it marks the unfinished ones on start
        finally:
            _stop(restarted)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    listed = _cli("audit", "--db", str(audit), "list")
    assert listed.returncode == 0, listed.stderr
    store = open_store(audit)
    try:
        request_ids = [r.body["request_id"] for r in store.records(kind="accepted")]
        assert len(request_ids) == accepted_n
        outcomes = {r.parent: r for r in store.records() if r.kind in ("answer", "interrupted", "rejected", "error")}
        accepts = {r.id: r.body["request_id"] for r in store.records(kind="accepted")}
        assert set(outcomes) == set(accepts)  # every accepted request has its one outcome
        interrupted = [r for r in outcomes.values() if r.kind == "interrupted"]
        assert len(interrupted) >= accepted_n - 1  # at most the running one could have ended
        for record in interrupted:
            assert record.id == accepts[record.parent]  # under the id its client was given
            assert record.body["error"]["code"] == "interrupted"
        for request_id in request_ids:
            assert request_id in listed.stdout
        assert listed.stdout.count("\tinterrupted\t") == len(interrupted)
        assert store.unfinished() == []  # type: ignore[attr-defined]
    finally:
        store.close()
    verified = _cli("audit", "--db", str(audit), "verify")
    assert verified.returncode == 0 and verified.stdout.startswith(f"OK: {accepted_n + len(outcomes)} records")


@pytest.mark.parametrize("running_on", ["openai", "ollama"])
def test_sigterm_refuses_what_the_drain_cannot_finish_with_503s_not_empty_answers(
        running_on: str, tiny_vlm_checkpoint: Path, tmp_path: Path) -> None:
    """The answer running when the drain ends is cut with an error as its last event, on the
    OpenAI stream and on Ollama's (never a done line that looks like a whole answer)."""
    import json
    import threading
    import time

    from medgem.audit import open_store

    audit = tmp_path / "audit.sqlite"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(serve_command(tiny_vlm_checkpoint, audit, port, "--drain-timeout", "4"),
                               env=serve_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    long = {"model": MODEL, "max_tokens": 4000, "messages": [{"role": "user", "content": "Write a long report."}]}
    results: dict[str, tuple[int, dict[str, str], str]] = {}

    running = long | {"stream": True}
    if running_on == "ollama":
        running = {"model": MODEL, "stream": True, "options": {"num_predict": 4000},
                   "messages": long["messages"]}

    def client(name: str, body: dict[str, object]) -> None:
        path = "/api/chat" if name == "running" and running_on == "ollama" else "/v1/chat/completions"
        with httpx.stream("POST", base + path, json=body, timeout=120) as response:
            results[name] = (response.status_code, dict(response.headers), response.read().decode())

    try:
        wait_healthy(base, process, timeout=180)
        store = open_store(audit)
        threads = []
        for name, body in (("running", running), ("queued", long), ("queued-stream", long | {"stream": True})):
            threads.append(threading.Thread(target=client, args=(name, body)))
            threads[-1].start()
            deadline = time.monotonic() + 60
            while store.count("accepted") < len(threads):  # in this order: the first one runs
                assert time.monotonic() < deadline
                time.sleep(0.05)
        store.close()
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for name in ("queued", "queued-stream"):  # never reached the engine: a 503 to retry
        status, headers, text = results[name]
        assert status == 503, (name, status, text)
        assert int(headers["retry-after"]) >= 1
        assert json.loads(text)["error"]["code"] == "server_shutting_down"
    status, _, text = results["running"]  # cut mid-stream: it ends with an error event, not [DONE]
    assert status == 200
    if running_on == "ollama":  # NDJSON: the last line is the error, and no line says done
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert lines[-1]["code"] == "server_shutting_down" and "shut down before" in lines[-1]["error"]
        assert not any(line.get("done") for line in lines)
    else:
        events = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
        assert events[-1] != "[DONE]" and json.loads(events[-1])["error"]["code"] == "server_shutting_down"
    store = open_store(audit)
    try:
        assert store.count("accepted") == 3 and store.unfinished() == []  # type: ignore[attr-defined]
        assert store.count("error") == 2 and store.verify().ok
    finally:
        store.close()


@pytest.mark.parametrize(("field", "value", "says"), [
    ("max_tokens", "4", "valid integer"), ("max_tokens", True, "valid integer"), ("max_tokens", 4.0, "valid integer"),
    ("stream", "yes", "valid boolean"), ("seed", "7", "valid integer"), ("temperature", "0.5", "valid number")])
def test_numbers_and_booleans_are_strict(served: tuple[subprocess.Popen[bytes], str, Path],
                                         field: str, value: object, says: str) -> None:
    _, base, _ = served
    response = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, field: value, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and says in error["message"]


def test_a_nan_temperature_must_be_a_finite_number(served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    _, base, _ = served
    for value in (b"NaN", b"Infinity"):
        response = httpx.post(base + "/v1/chat/completions", timeout=60, headers={"content-type": "application/json"},
                              content=b'{"model": "%s", "temperature": %s, "messages": [{"role": "user", "content": "hi"}]}'
                              % (MODEL.encode(), value))
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("'temperature': Input should be a finite number")


def test_schema_and_handlers_agree_on_empty_inputs_and_methods(served: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    _, base, _ = served
    document = httpx.get(base + "/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["PreviewRequest"]["properties"]["image"]["minLength"] == 1  # "" is outside the schema
    assert "content" in schemas["UserMessage"]["required"]  # a user turn without content too
    empty = httpx.post(base + "/api/preview", json={"image": ""}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "image"
    silent = httpx.post(base + "/v1/chat/completions", timeout=60, json={"model": MODEL, "messages": [{"role": "user"}]})
    assert silent.status_code == 400 and silent.json()["error"]["param"] == "messages.0.content"
    answer_back = httpx.post(base + "/v1/chat/completions", timeout=120, json={"model": MODEL, "max_tokens": 2, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "again"}]})
    assert answer_back.status_code == 200, answer_back.text
    put = httpx.put(base + "/v1/chat/completions", json={})
    assert put.status_code == 405 and put.headers["allow"] == "POST"
    assert put.json()["error"]["code"] == "method_not_allowed"
    assert httpx.delete(base + "/api/records/abc").headers["allow"] == "GET"
    assert httpx.put(base + "/no/such/route").status_code == 404
