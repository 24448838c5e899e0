"""Shared pieces for the server tests: a scripted engine, a server thread, a server process.

The scripted engine tests the server's own logic (queueing, cancelling, auditing, errors); the
real transformers engine on the tiny checkpoint is exercised over HTTP in test_server_real.py.
Run as a script, this module serves the scripted engine (the subprocess tests kill it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from medgem.api import MedGemma
from medgem.audit import AuditStore, open_store
from medgem.audit.trail import AuditTrail
from medgem.engines.base import (
    Capabilities,
    EngineEvent,
    Finished,
    ModelInfo,
    Prepared,
    TextDelta,
    Timings,
    Usage,
    as_prepared,
)
from medgem.request import Request
from medgem.request.thinking import THINK_INSTRUCTION

SCRIPTED_ID = "medgem-test-scripted"


class ScriptedEngine:
    """Answers with fixed text, word by word, honouring budget and cancel."""

    name = "scripted"

    def __init__(self, reply: str = "No acute cardiopulmonary abnormality is seen.", *,
                 thought: str = "The lungs look clear on both sides.", delay: float = 0.0,
                 context_length: int = 4096, images: bool = True) -> None:
        self.reply = reply
        self.thought = thought
        self.delay = delay
        self.info = ModelInfo(SCRIPTED_ID, "0" * 40, None, "scripted", "float32", demo=True,
                              context_length=context_length)
        self.capabilities = Capabilities(images=images)
        self.calls = 0
        self.cancelled = 0

    def health(self) -> dict[str, object]:
        return {}

    def _text(self, request: Request) -> str:
        thinks = any(THINK_INSTRUCTION in m.text for m in request.messages)
        prefix = f"<unused94>thought\n{self.thought}<unused95>" if thinks else ""
        return f"{prefix}Seen {len(request.images)} image(s). {self.reply}"

    def generate(self, request: Request | Prepared,
                 cancel: threading.Event | None = None) -> Iterator[EngineEvent]:
        self.calls += 1
        start = time.monotonic()
        prepared = as_prepared(self, request)
        request = prepared.request
        pieces = _pieces(self._text(request))
        budget = request.options.budget
        prompt = prepared.prompt_tokens
        first = 0.0
        for count, piece in enumerate(pieces[:budget], start=1):
            if cancel is not None and cancel.is_set():
                self.cancelled += 1
                yield Finished("cancelled", Usage(prompt, count - 1), Timings(first, time.monotonic() - start, count - 1))
                return
            if self.delay:
                time.sleep(self.delay)
            if count == 1:
                first = time.monotonic() - start
            yield TextDelta(piece)
        produced = min(len(pieces), budget)
        reason = "length" if len(pieces) > budget else "stop"
        yield Finished(reason, Usage(prompt, produced), Timings(first, time.monotonic() - start, produced))

    def prepare(self, request: Request) -> Prepared:
        return Prepared(request, sum(len(m.text.split()) for m in request.messages)
                        + 256 * len(request.images))

    def close(self) -> None:
        pass


def _pieces(text: str) -> list[str]:
    """Word-sized pieces that keep the thought markers whole."""
    out: list[str] = []
    for word in text.split(" "):
        out.append(word + " ")
    out[-1] = out[-1].rstrip(" ")
    return out


def scripted_model(**kwargs: object) -> MedGemma:
    return MedGemma(ScriptedEngine(**kwargs))  # type: ignore[arg-type]


def audited(model: MedGemma, store: AuditStore) -> MedGemma:
    """The model, writing its answers' records to ``store`` (a server reads its model's store)."""
    model.audit = AuditTrail(store, surface="server")
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_data_url(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (90, 90, 90)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@contextlib.contextmanager
def serve_in_thread(app: object) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def serve_in_process(audit: Path, *, delay: float = 0.01, max_queue: int = 64, words: int = 0,
                     ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """This module as a server process; yields (process, base URL).

    Args:
        words: answer length in words (0: the short default reply).
    """
    port = free_port()
    command = [sys.executable, __file__, "--port", str(port), "--audit", str(audit),
               "--delay", str(delay), "--max-queue", str(max_queue), "--words", str(words)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def wait_healthy(base: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"the server exited: {output[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become healthy")


def main() -> None:
    import uvicorn

    from medgem.server.app import create_app
    from medgem.server.server_config import ServerConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--audit", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.01)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--words", type=int, default=0)
    args = parser.parse_args()
    config = ServerConfig(port=args.port, max_queue=args.max_queue, drain_timeout_s=30)
    reply = " ".join(f"word{i}" for i in range(args.words)) if args.words else None
    model = scripted_model(delay=args.delay, **({"reply": reply} if reply else {}))
    app = create_app(config, audited(model, open_store(args.audit)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
