"""Bounded load on `medgem serve` over 127.0.0.1: N concurrent clients, a fixed request count.

Starts the server as a user does (`python -m medgem serve`) on the tiny random-weight checkpoint
(or --model), runs the load with the openai client, and prints throughput, p50/p95 latency,
errors, and whether the audit store holds exactly one record per request with a valid chain.

    python benchmarks/bench_server.py --clients 4 --requests 40 --max-tokens 16 --image
    python benchmarks/bench_server.py --model demo.gguf --engine llamacpp --parallel 4
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
from typing import Any


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


def measure(args: argparse.Namespace, model: str, parallel: int, work: Path) -> dict[str, Any]:
    """Start `medgem serve --parallel N`, run the load, stop it with SIGTERM, read the audit."""
    import openai

    from medgem.audit import open_store

    port = _free_port()
    audit = work / f"audit-{parallel}.sqlite"
    command = [sys.executable, "-m", "medgem", "serve", "--model", model, "--engine", args.engine,
               "--port", str(port), "--audit-db", str(audit),
               "--max-queue", str(max(args.clients, 1)), "--parallel", str(parallel)]
    if args.engine.startswith("hf"):
        command += ["--device", args.device]
    if args.n_ctx:
        command += ["--n-ctx", str(args.n_ctx)]
    env = {**os.environ, "MEDGEM_API_KEYS": str(work / "no-keys.json")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    try:
        _wait(base, process)
        client = openai.OpenAI(base_url=base + "/v1", api_key="local", max_retries=0, timeout=600)
        served = client.models.list().data[0].id
        content: list[dict[str, object]] = [{"type": "text", "text": "Describe this chest X-ray."}]
        if args.image:
            content.insert(0, {"type": "image_url", "image_url": {"url": _png()}})
        messages = [{"role": "user", "content": content}]
        client.chat.completions.create(model=served, messages=messages, max_tokens=2)  # type: ignore[arg-type]  # warm-up
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
    ordered = sorted(latencies)
    return {
        "wall": wall, "requests_s": len(latencies) / wall, "tokens_s": sum(tokens) / wall,
        "p50": statistics.median(ordered) if ordered else float("nan"),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else float("nan"),
        "errors": errors, "rows": store.count() - 1, "chain_ok": store.verify().ok,  # - warm-up
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: build the tiny test VLM)")
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=1,
                        help="also run the server with --parallel N, against --parallel 1 in the same run")
    parser.add_argument("--n-ctx", type=int, help="llama.cpp context per request")
    parser.add_argument("--image", action="store_true", help="send a 256x256 PNG with each question")
    parser.add_argument("--stream", action="store_true", help="stream the answers")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medgem-bench-"))
    model = args.model
    if model is None:
        from medgem.demo.build import build_checkpoint

        model = str(build_checkpoint(work / "tiny-vlm", multimodal=True, model_id="medgem-test-vlm"))
    runs = {1: measure(args, model, 1, work)}
    if args.parallel > 1:
        runs[args.parallel] = measure(args, model, args.parallel, work)

    print(f"model: {Path(model).name}  engine/device: {args.engine}/{args.device}  "
          f"{args.clients} clients x {args.requests} requests, {args.max_tokens} tokens"
          + (" (stream)" if args.stream else "") + (", image + text" if args.image else ", text"))
    print(f"{'--parallel':>10} | {'wall s':>7} | {'req/s':>6} | {'x serial':>8} | {'tok/s':>6} | "
          f"{'p50 s':>6} | {'p95 s':>6} | {'errors':>6} | audit rows == requests")
    print("-" * 96)
    ok = True
    for parallel, run in runs.items():
        audit_ok = run["rows"] == args.requests and run["chain_ok"]
        ok = ok and audit_ok and not run["errors"]
        print(f"{parallel:>10} | {run['wall']:>7.2f} | {run['requests_s']:>6.2f} | "
              f"{run['requests_s'] / runs[1]['requests_s']:>8.2f} | {run['tokens_s']:>6.1f} | "
              f"{run['p50']:>6.2f} | {run['p95']:>6.2f} | {len(run['errors']):>6} | "
              f"{audit_ok} ({run['rows']} rows, chain {'ok' if run['chain_ok'] else 'BROKEN'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
