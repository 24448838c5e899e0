"""Bounded load on `medgem serve` over 127.0.0.1: N concurrent clients, a fixed request count.

Starts the server as a user does (`python -m medgem serve`) on the tiny random-weight checkpoint
(or --model), runs the load with the openai client, and prints throughput, p50/p95 latency,
errors, and whether the audit store holds exactly one record per request with a valid chain.

    python benchmarks/bench_server.py --clients 4 --requests 40 --max-tokens 16 --image
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (80, 80, 80)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wait(base: str, process: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: build the tiny test VLM)")
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--image", action="store_true", help="send a 256x256 PNG with each question")
    parser.add_argument("--stream", action="store_true", help="stream the answers")
    args = parser.parse_args()

    import openai

    from medgem.audit import open_store

    work = Path(tempfile.mkdtemp(prefix="medgem-bench-"))
    model = args.model
    if model is None:
        from medgem.demo.build import build_checkpoint

        model = str(build_checkpoint(work / "tiny-vlm", multimodal=True, model_id="medgem-test-vlm"))
    port = _free_port()
    audit = work / "audit.sqlite"
    command = [sys.executable, "-m", "medgem", "serve", "--model", model, "--engine", args.engine,
               "--device", args.device, "--port", str(port), "--audit-db", str(audit),
               "--max-queue", str(max(args.clients, 1))]
    env = {**os.environ, "MEDGEM_API_KEYS": str(work / "no-keys.json")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, process)
        client = openai.OpenAI(base_url=base + "/v1", api_key="local", max_retries=0, timeout=600)
        served = client.models.list().data[0].id
        content: list[dict[str, object]] = [{"type": "text", "text": "Describe this chest X-ray."}]
        if args.image:
            content.insert(0, {"type": "image_url", "image_url": {"url": _png()}})
        messages = [{"role": "user", "content": content}]
        client.chat.completions.create(model=served, messages=messages, max_tokens=2)  # type: ignore[arg-type]  # warm-up
        warm_records = 1

        latencies: list[float] = []
        tokens: list[int] = []
        errors: list[str] = []
        lock = threading.Lock()
        remaining = iter(range(args.requests))

        def worker() -> None:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                start = time.perf_counter()
                try:
                    if args.stream:
                        count = 0
                        stream = client.chat.completions.create(
                            model=served, messages=messages, max_tokens=args.max_tokens, stream=True,  # type: ignore[arg-type]
                            stream_options={"include_usage": True})
                        for chunk in stream:
                            if chunk.usage:
                                count = chunk.usage.completion_tokens
                    else:
                        reply = client.chat.completions.create(model=served, messages=messages, max_tokens=args.max_tokens)  # type: ignore[arg-type]
                        count = reply.usage.completion_tokens if reply.usage else 0
                except Exception as exc:  # counted, not raised: a load test reports errors
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens.append(count)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)

    store = open_store(audit)
    rows = store.count() - warm_records
    chain_ok = store.verify().ok
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else float("nan")
    table = [
        ("model", Path(model).name),
        ("engine / device", f"{args.engine} / {args.device}"),
        ("clients x requests", f"{args.clients} x {args.requests}" + (" (stream)" if args.stream else "")),
        ("input", "image + text" if args.image else "text"),
        ("wall time", f"{wall:.2f} s"),
        ("throughput", f"{len(latencies) / wall:.2f} req/s, {sum(tokens) / wall:.1f} tok/s"),
        ("latency p50", f"{statistics.median(ordered):.3f} s" if ordered else "-"),
        ("latency p95", f"{p95:.3f} s"),
        ("errors", str(len(errors)) + (f" ({', '.join(sorted(set(errors)))})" if errors else "")),
        ("audit rows == requests", f"{rows == args.requests} ({rows} rows, chain {'ok' if chain_ok else 'BROKEN'})"),
    ]
    width = max(len(name) for name, _ in table)
    print(f"{'metric':<{width}} | value")
    print(f"{'-' * width}-|-{'-' * 40}")
    for name, value in table:
        print(f"{name:<{width}} | {value}")
    return 0 if rows == args.requests and chain_ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
