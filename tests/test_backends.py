"""medgem in front of servers that are not medgem: llama-cpp-python's own OpenAI-compatible
server (`llama_cpp.server`) with the real 270M GGUF, one and two of them, one killed mid-load.

The servers are real processes on 127.0.0.1. Each first loads the CPU backend the way medgem's
engine does (the portable build keeps its CPU kernels in loadable backends), then runs
`llama_cpp.server` unchanged.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medgem.api import MedGemma
from medgem.errors import ContextLengthError, RemoteError
from test_server_helpers import free_port

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extras")
pytestmark = pytest.mark.usefixtures("llamacpp_runs")
MODEL = "gemma-3-270m"
SERVER = """
import runpy, sys
from medgem.engines.llamacpp.native import import_llama_cpp
import_llama_cpp()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


@pytest.fixture(scope="module")
def gguf() -> Path:
    from medgem.demo.build import demo_gguf_path

    return demo_gguf_path()


@contextlib.contextmanager
def llama_server(gguf: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, "--model", str(gguf), "--model_alias", MODEL,
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--chat_format", "gemma",
         "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "llama_cpp.server exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


@pytest.fixture(scope="module")
def backend(gguf: Path) -> Iterator[str]:
    with llama_server(gguf) as (_, url):
        yield url


def test_answers_plain_and_streamed_with_usage_from_a_non_medgem_server(backend: str) -> None:
    model = MedGemma.load(MODEL, engine="remote", options={"base_url": backend}, audit=False)
    try:
        messages = [{"role": "user", "content": "List three symptoms of pneumonia."}]
        answer = model.chat(messages, max_new_tokens=12)
        assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 5
        assert answer.finish_reason in ("stop", "length") and answer.served_by == backend
        streamed = list(model.stream_chat(messages, max_new_tokens=12))
        # (not compared with the first answer: the server's prompt cache evaluates the second
        # call in other batch shapes, and near ties can swap)
        assert len(streamed) > 3 and streamed[-1].answer.usage.completion_tokens > 0  # type: ignore[union-attr]
        # No medgem fields in its /v1/models: nothing is made up.
        assert model.engine.info.variant is None and model.engine.info.demo is False
        assert model.engine.info.revision is None
    finally:
        model.close()


def test_stop_strings_and_errors_from_a_non_medgem_server(backend: str) -> None:
    model = MedGemma.load(MODEL, engine="remote", options={"base_url": backend}, audit=False)
    try:
        messages = [{"role": "user", "content": "Count from one to twenty in words, with commas."}]
        full = model.chat(messages, max_new_tokens=24)
        assert " " in full.text, full.text
        cut = model.chat(messages, max_new_tokens=24, stop=[" "])
        assert " " not in cut.text and cut.finish_reason == "stop"
        assert cut.usage.completion_tokens < full.usage.completion_tokens
        # llama.cpp's server refuses a stream that overflows its context by ending it empty,
        # with no error: medgem says so instead of handing back an empty answer.
        with pytest.raises((ContextLengthError, RemoteError), match="longer than its context"):
            model.chat([{"role": "user", "content": "word " * 700}], max_new_tokens=4)
    finally:
        model.close()
    with pytest.raises(RemoteError, match=f"does not serve 'medgemma-4b-it'.*it serves: {MODEL}"):
        MedGemma.load("medgemma-4b-it", engine="remote", options={"base_url": backend}, audit=False)


def test_one_front_two_backends_survives_one_killed_mid_load(gguf: Path, tmp_path: Path) -> None:
    """4 clients x 20 requests through one medgem front to two llama.cpp servers; one is killed
    mid-load: every request completes or is a 503 (streaming from the killed one), the audit
    holds one record per request, and the restarted backend gets requests again."""
    from medgem.audit import open_store
    from medgem.server.app import create_app
    from medgem.server.server_config import ServerConfig
    from test_server_helpers import audited, serve_in_thread

    port_a = free_port()
    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    with llama_server(gguf, port_a) as (process_a, url_a), llama_server(gguf) as (_, url_b):
        # one request at a time to each (llama.cpp's server runs one at a time)
        front = MedGemma.load(MODEL, engine="remote", options={"base_url": f"{url_a},{url_b}", "parallel": 1}, audit=False)
        assert front.batcher.parallel == 2
        engine = front.engine
        store = open_store(tmp_path / "front.sqlite")
        try:
            with serve_in_thread(create_app(ServerConfig(max_queue=16), audited(front, store))) as base:
                def client(requests: int) -> None:
                    for index in range(requests):
                        body = {"model": MODEL, "max_tokens": 6,
                                "messages": [{"role": "user", "content": f"Name organ {index}."}]}
                        response = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
                        with lock:
                            statuses.append(response.status_code)
                            if response.status_code != 200:
                                errors.append(response.text)

                threads = [threading.Thread(target=client, args=(20,)) for _ in range(4)]
                for thread in threads:
                    thread.start()
                while len(statuses) < 20:
                    time.sleep(0.05)
                process_a.kill()  # mid-load
                for thread in threads:
                    thread.join()
                assert set(statuses) <= {200, 503} and len(statuses) == 80, errors
                assert statuses.count(200) >= 60, statuses
                assert store.count("answer") == statuses.count(200)
                # answers + failures: every request has its outcome (after its accept record)
                assert store.count() - store.count("accepted") == 80
                health = httpx.get(base + "/healthz").json()
                assert [b["healthy"] for b in health["backends"]] == [False, True]

                with llama_server(gguf, port_a):  # the same backend, back on its port
                    deadline = time.monotonic() + 30
                    while not engine.backends[0]["healthy"]:  # type: ignore[attr-defined]
                        assert time.monotonic() < deadline, "the health check never saw it back"
                        time.sleep(0.2)
                    before = engine.backends[0]["answered"]  # type: ignore[attr-defined]
                    threads = [threading.Thread(target=client, args=(3,)) for _ in range(4)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                    assert engine.backends[0]["answered"] > before  # type: ignore[attr-defined]
        finally:
            front.close()
    served = {r.body.get("served_by") for r in store.records() if r.kind == "answer"}
    assert served == {url_a, url_b}


def test_eval_spreads_its_questions_over_two_backends(gguf: Path, tmp_path: Path) -> None:
    """`medgem eval --engine remote` with two backends and --concurrency 2: both answer."""
    from medgem.evaluate import EvalConfig, TaskOptions, prepare, run_evaluation

    data = Path(__file__).parent / "data" / "eval" / "medqa.jsonl"
    with llama_server(gguf) as (_, url_a), llama_server(gguf) as (_, url_b):
        model = MedGemma.load(MODEL, engine="remote", options={"base_url": f"{url_a},{url_b}"}, audit=False)
        try:
            config = EvalConfig(task="mcq", data=str(data), concurrency=2, max_new_tokens=6,
                                options=TaskOptions())
            outcome = run_evaluation(model, prepare(config), tmp_path / "run", progress=False)
            answered = [b["answered"] for b in model.engine.backends]  # type: ignore[attr-defined]
        finally:
            model.close()
    assert outcome.ran == 6 and outcome.failed == 0
    assert all(count > 0 for count in answered) and sum(answered) == 6, answered
