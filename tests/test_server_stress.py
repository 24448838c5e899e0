"""Hostile and careless clients against `medgem serve` (the tiny real VLM on the transformers
engine) on 127.0.0.1 (issue 25: accountable under stress): what they send costs a bounded
amount of the server's memory and is refused with an OpenAI-style 4xx, and the server keeps
serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from test_server_helpers import free_port, wait_healthy

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
    process = subprocess.Popen(serve_command(tiny_vlm_checkpoint, audit, port, "--max-images", "4"),
                               env=serve_env(folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, timeout=180)
        yield process, base, audit
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
