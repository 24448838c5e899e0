"""Many requests at once: llama.cpp slots (continuous batching), transformers padded batches,
`ask_many`, the eval harness and the server with --parallel, against the serial answers.

Nothing is mocked: the real 270M GGUF and the tiny checkpoints, a real HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli
from medgem.api import MedGemma
from medgem.engines import LlamaCppOptions, load_engine
from medgem.engines.base import Finished, TextDelta
from medgem.errors import InputError, ResourceError
from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart
from medgem.resolve import resolve_checkpoint

torch = pytest.importorskip("torch")
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Pneumonia is an infection that",
           "The heart has four"]
DATA = Path(__file__).parent / "data" / "eval"


def completion(text: str, tokens: int) -> Request:
    return Request((Message("user", (TextPart(text),)),), GenerationOptions(max_new_tokens=tokens),
                   template="completion")


def image_question(seed: int, tokens: int) -> Request:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return Request((Message("user", (ImagePart(Image.fromarray(pixels)),
                                     TextPart("Describe this X-ray."))),),
                   GenerationOptions(max_new_tokens=tokens))


def answers(model: MedGemma, requests: list[Request]) -> list[str]:
    """ask_many's answers, back in request order (they finish in any order)."""
    out: dict[int, str] = {}
    for index, outcome in model.ask_many(requests):
        assert not isinstance(outcome, Exception), outcome
        out[index] = outcome.raw
    return [out[i] for i in range(len(requests))]


def serial(model: MedGemma, requests: list[Request]) -> list[str]:
    return [next(c.answer.raw for c in model.generate(r) if hasattr(c, "answer"))
            for r in requests]


def engine_events(model: MedGemma, request: Request, cancel: threading.Event | None = None,
                  ) -> Iterator[Any]:
    return model.batcher.generate(model.engine.prepare(request), cancel)


# --- llama.cpp: slots in one context --------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_270m() -> Path:
    pytest.importorskip("llama_cpp")
    from medgem.demo.build import demo_gguf_path

    return demo_gguf_path()


@pytest.fixture(scope="module")
def llama_pair(gguf_270m: Path, llamacpp_runs: None) -> Iterator[tuple[MedGemma, MedGemma]]:
    checkpoint = resolve_checkpoint(gguf_270m)
    one = MedGemma(load_engine("llamacpp", checkpoint, LlamaCppOptions(n_ctx=512)))
    four = MedGemma(load_engine("llamacpp", checkpoint, LlamaCppOptions(n_ctx=512, parallel=4)),
                    parallel=4)
    yield one, four
    one.close()
    four.close()


@pytest.fixture(scope="module")
def four_separate(gguf_270m: Path, llamacpp_runs: None) -> Iterator[MedGemma]:
    """Four slots with a KV buffer each (the default is one buffer for all: see the engine)."""
    engine = load_engine("llamacpp", resolve_checkpoint(gguf_270m),
                         LlamaCppOptions(n_ctx=512, parallel=4, kv_unified=False))
    model = MedGemma(engine, parallel=4)
    yield model
    model.close()


@pytest.mark.parametrize("layout", ["unified", "separate"])
def test_llamacpp_batch_agrees_with_serial_greedy_up_to_near_ties(
        llama_pair: tuple[MedGemma, MedGemma], four_separate: MedGemma, reference_270m: Path,
        layout: str) -> None:
    """Four sequences decoded in one batch against each alone, on the real Q4_K_M weights.

    Not bit-identical, and llama.cpp does not promise it: a batch of four runs the quantized
    matmuls through other kernels than one token does (measured: four copies of one prompt in
    one batch gave two different answers). The bound is the engine tests' own near tie: where a
    batched answer leaves the serial one, the float32 logits of the two candidates are within
    0.5 (measured here: one of four prompts parts, at token 3, gap 0.12). It holds for both KV
    layouts (one buffer shared by the sequences, the default, and one each): on 24 prompts each
    layout parted from serial once, at token 3 (gap 0.05) and token 5 (gap 0.13).
    """
    from transformers import AutoModelForCausalLM

    one, four = llama_pair
    if layout == "separate":
        four = four_separate
    engine: Any = four.engine
    assert engine.capabilities.batching == "continuous"
    assert engine.kv_unified == (layout == "unified")
    requests = [completion(p, 24) for p in PROMPTS]
    # Staggered starts: later prompts are prefilled in the same llama_decode as the earlier
    # ones' next tokens and, with one buffer, their cells land among the others' (the layout
    # that moved an eval's first token by rounding).
    sequences = [engine.start(engine.prepare(requests[0]))]
    engine.step(sequences)
    for request in requests[1:]:
        sequences.append(engine.start(engine.prepare(request)))
        engine.step(sequences)
    while not all(s.done for s in sequences):
        engine.step(sequences)
    batched = [s.tokens for s in sequences]
    reference = []
    for request in requests:
        list(one.engine.generate(request))
        reference.append(list(one.engine.last_tokens))  # type: ignore[attr-defined]
    # The same GGUF as transformers reads it (dequantized to float32), saved once by conftest.
    model = AutoModelForCausalLM.from_pretrained(str(reference_270m), dtype=torch.float32).eval()
    for prompt, ours, theirs in zip(PROMPTS, batched, reference, strict=True):
        assert len(ours) == len(theirs) == 24
        split = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        if split is None:
            continue
        ids = one.engine.tokenize("<bos>" + prompt) + theirs[:split]  # type: ignore[attr-defined]
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1]
        gap = abs(float(logits[theirs[split]] - logits[ours[split]]))
        assert gap < 0.5, (prompt, split, gap)


def test_a_new_prompt_is_prefilled_in_the_running_sequences_decode(
        llama_pair: tuple[MedGemma, MedGemma]) -> None:
    """llama-server's way: the step after a request arrives runs ONE llama_decode holding the
    running sequence's next token and the new prompt, and both come out of it with a token."""
    _, four = llama_pair
    engine: Any = four.engine
    running = engine.start(engine.prepare(completion("A cough that lasts three weeks", 8)))
    engine.step([running])  # its prompt: one batch of its own
    assert running.pending is not None and len(running.tokens) == 1
    new = engine.start(engine.prepare(completion("Sepsis is first treated with", 8)))
    to_prefill = len(new.prompt.units) - new.next_unit  # less what its slot already held
    assert to_prefill > 3
    batches: list[int] = []
    real_batch = engine._batch

    def counted(entries: list[tuple[int, int, int, bool]]) -> None:
        batches.append(len(entries))
        real_batch(entries)

    engine._batch = counted
    try:
        engine.step([running, new])
    finally:
        del engine._batch  # the bound method again
    assert batches == [1 + to_prefill]
    assert len(running.tokens) == 2 and len(new.tokens) == 1 and not new.prefilling
    while not (running.done and new.done):
        engine.step([s for s in (running, new) if not s.done])
    assert len(running.tokens) == len(new.tokens) == 8


def test_a_request_joins_the_running_batch(llama_pair: tuple[MedGemma, MedGemma]) -> None:
    """The second request starts while the first decodes and ends before it: continuous."""
    _, four = llama_pair
    timeline: list[tuple[str, str]] = []
    texts = {"long": "", "late": ""}
    lock = threading.Lock()

    def run(name: str, request: Request) -> None:
        for event in engine_events(four, request):
            with lock:
                timeline.append((name, type(event).__name__))
            if isinstance(event, TextDelta):
                texts[name] += event.text

    long = threading.Thread(target=run, args=("long", completion(PROMPTS[0], 60)))
    long.start()
    while sum(1 for name, _ in timeline if name == "long") < 5:
        time.sleep(0.005)
    late = threading.Thread(target=run, args=("late", completion(PROMPTS[2], 8)))
    late.start()
    long.join()
    late.join()
    assert timeline.index(("late", "Finished")) < timeline.index(("long", "Finished"))
    # Both answered in full (agreement with serial answers: the near-tie test above).
    assert timeline.count(("long", "Finished")) == timeline.count(("late", "Finished")) == 1
    assert texts["late"] and len(texts["long"]) > len(texts["late"])


def test_a_cancelled_request_frees_its_slot_and_the_others_go_on(
        llama_pair: tuple[MedGemma, MedGemma]) -> None:
    _, four = llama_pair
    cancel = threading.Event()
    results: dict[str, list[Any]] = {}

    def run(name: str, request: Request, stop: threading.Event | None) -> None:
        events = []
        for event in engine_events(four, request, stop):
            events.append(event)
            if stop is not None and len(events) == 3:
                stop.set()
        results[name] = events

    threads = [threading.Thread(target=run, args=("cancelled", completion(PROMPTS[1], 200), cancel)),
               threading.Thread(target=run, args=("kept", completion(PROMPTS[3], 20), None))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cancelled, kept = results["cancelled"][-1], results["kept"][-1]
    assert isinstance(cancelled, Finished) and cancelled.finish_reason == "cancelled"
    assert cancelled.usage.completion_tokens < 10
    assert isinstance(kept, Finished) and kept.usage.completion_tokens == 20
    assert kept.finish_reason == "length"
    # every slot is free again: four more run at once
    assert len(answers(four, [completion(p, 4) for p in PROMPTS])) == 4


def test_a_prompt_too_long_for_a_slot_is_refused_alone(llama_pair: tuple[MedGemma, MedGemma]) -> None:
    _, four = llama_pair
    long = completion(" ".join(["word"] * 600), 4)
    outcomes = dict(four.ask_many([long, completion(PROMPTS[0], 4)]))
    assert "context" in str(outcomes[0]) and not isinstance(outcomes[1], Exception)


def test_parallel_the_machine_cannot_hold_is_refused_before_loading(gguf_270m: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ResourceError, match=r"--parallel 100000 at --n-ctx 32768 needs .* KV cache"):
        MedGemma.load(gguf_270m, options={"n_ctx": 32768, "parallel": 100_000}, audit=False)
    assert time.perf_counter() - started < 5


def test_parallel_is_refused_where_the_engine_cannot_batch(tiny_text_checkpoint: Path) -> None:
    with pytest.raises(InputError, match="parallel does not apply to the hf-pipeline engine"):
        MedGemma.load(tiny_text_checkpoint, engine="hf-pipeline", options={"parallel": 2}, audit=False)
    with pytest.raises(InputError, match="at least 1"):
        MedGemma.load(tiny_text_checkpoint, options={"parallel": 0}, audit=False)


def test_images_in_a_batch_match_serial(converted_vlm: Path, llamacpp_runs: None) -> None:
    checkpoint = resolve_checkpoint(converted_vlm)
    requests = [image_question(1, 12), image_question(2, 12), image_question(1, 6)]
    one = MedGemma(load_engine("llamacpp", checkpoint, LlamaCppOptions(n_ctx=1024)))
    three = MedGemma(load_engine("llamacpp", checkpoint, LlamaCppOptions(n_ctx=1024, parallel=3)),
                     parallel=3)
    try:
        assert answers(three, requests) == serial(one, requests)
    finally:
        one.close()
        three.close()


# --- transformers: padded batches -----------------------------------------------------------


def test_transformers_padded_batch_matches_serial(tiny_vlm_checkpoint: Path) -> None:
    one = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False}, audit=False)
    three = MedGemma.load(tiny_vlm_checkpoint, engine="hf", options={"device": "cpu", "progress": False, "parallel": 3}, audit=False)
    requests = [image_question(1, 10), completion("The lungs are", 6), image_question(2, 14)]
    try:
        assert three.engine.capabilities.batching == "static"
        assert answers(three, requests) == serial(one, requests)
    finally:
        one.close()
        three.close()


# --- the eval harness and the server --------------------------------------------------------


def test_eval_with_concurrency_reports_what_a_serial_run_reports(converted_vlm: Path, tmp_path: Path,
                                                                  llamacpp_runs: None) -> None:
    """On the test model (f16 GGUF) a batched evaluation reports exactly what a serial one does.
    (The real 270M's Q4_K_M kernels part at near ties in a batch; that bound is tested above.)"""
    reports = []
    for concurrency in ("1", "4"):
        out = tmp_path / f"run-{concurrency}"
        result = run_cli("eval", "mcq", str(DATA / "medqa.jsonl"), "--model", str(converted_vlm),
                         "--max-new-tokens", "8", "--out", str(out), "--no-progress",
                         "--concurrency", concurrency, "--n-ctx", "1024")
        assert result.returncode == 0, result.stderr
        rows = {json.loads(x)["id"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
        reports.append((json.loads((out / "report.json").read_text()),
                        {i: (r["reply"], r["correct"]) for i, r in rows.items()}))
    (serial_report, serial_rows), (batched_report, batched_rows) = reports
    assert batched_rows == serial_rows and len(serial_rows) == 6
    assert batched_report["metrics"] == serial_report["metrics"]
    assert batched_report["n_scored"] == serial_report["n_scored"] == 6


def test_server_with_parallel_answers_concurrent_clients(gguf_270m: Path, tmp_path: Path,
                                                          llamacpp_runs: None) -> None:
    import httpx

    from medgem.audit import open_store
    from medgem.server.app import create_app
    from medgem.server.server_config import ServerConfig
    from test_server_helpers import audited, serve_in_thread

    model = MedGemma.load(gguf_270m, options={"n_ctx": 512, "parallel": 4}, audit=False)
    store = open_store(tmp_path / "audit.sqlite")
    replies: list[tuple[int, str]] = []

    def ask(text: str) -> None:
        body = {"model": model.engine.info.id, "messages": [{"role": "user", "content": text}], "max_tokens": 12}
        response = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
        replies.append((response.status_code,
                        response.json()["choices"][0]["message"]["content"]
                        if response.status_code == 200 else response.text))

    try:
        with serve_in_thread(create_app(ServerConfig(max_queue=8), audited(model, store))) as base:
            health = httpx.get(base + "/healthz").json()
            assert health["running"] == 0
            threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS * 2]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        model.close()
    assert [status for status, _ in replies] == [200] * 8, replies
    assert store.count("answer") == 8


def test_a_remote_front_sends_its_parallel_requests_at_once(gguf_270m: Path, tmp_path: Path,
                                                              llamacpp_runs: None) -> None:
    """A medgem front (remote engine, --parallel 4) before a llama.cpp back end (--parallel 4):
    the back end decodes the front's concurrent requests together."""
    import httpx

    from medgem.audit import open_store
    from medgem.server.app import create_app
    from medgem.server.server_config import ServerConfig
    from test_server_helpers import audited, serve_in_thread

    backend = MedGemma.load(gguf_270m, options={"n_ctx": 512, "parallel": 4}, audit=False)
    statuses: list[int] = []
    try:
        with serve_in_thread(create_app(ServerConfig(), audited(backend, open_store(tmp_path / "back.sqlite")))) as back:
            front = MedGemma.load(backend.engine.info.id, engine="remote",
                                  options={"base_url": back + "/v1", "parallel": 4}, audit=False)
            with serve_in_thread(create_app(ServerConfig(), audited(front, open_store(tmp_path / "front.sqlite")))) as base:
                def ask(text: str) -> None:
                    body = {"model": front.engine.info.id, "max_tokens": 24,
                            "messages": [{"role": "user", "content": text}]}
                    statuses.append(httpx.post(base + "/v1/chat/completions", json=body,
                                               timeout=120).status_code)

                threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                metrics = httpx.get(base + "/metrics").text
            front.close()
    finally:
        backend.close()
    assert statuses == [200] * 4
    assert backend.batcher.peak >= 2  # the back end had several of them in one batch
    assert "medgem_batch_size" in metrics


def test_serve_parallel_drains_every_running_sequence_on_sigterm(gguf_270m: Path, tmp_path: Path,
                                                                  llamacpp_runs: None) -> None:
    """`medgem serve --parallel 4` as a user runs it: SIGTERM while four answers stream; all
    four finish, and the audit store holds exactly their four records."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from medgem.audit import open_store
    from test_server_helpers import free_port, wait_healthy

    port = free_port()
    audit = tmp_path / "audit.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "medgem", "serve", "--model", str(gguf_270m), "--parallel", "4",
         "--n-ctx", "512", "--port", str(port), "--audit-db", str(audit),
         "--drain-timeout", "600"],  # draining is the point, not its bound: a busy box is slow
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "MEDGEM_API_KEYS": str(tmp_path / "none.json")})
    base = f"http://127.0.0.1:{port}"
    done: list[bool] = []
    streaming = threading.Semaphore(0)

    def stream(text: str) -> None:
        body = {"model": "gemma-3-270m-q4_k_m", "stream": True, "max_tokens": 120,
                "messages": [{"role": "user", "content": text}]}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    streaming.release()
                    break
            done.append(any(line == "data: [DONE]" for line in lines))

    try:
        wait_healthy(base, process, timeout=120)
        threads = [threading.Thread(target=stream, args=(p,)) for p in PROMPTS]
        for thread in threads:
            thread.start()
        for _ in PROMPTS:
            assert streaming.acquire(timeout=120)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join()
        assert process.wait(600) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert done == [True] * 4
    store = open_store(audit)
    assert store.count("answer") == 4 and store.verify().ok
