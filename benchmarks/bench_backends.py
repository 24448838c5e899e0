"""One medgem front before one and two llama.cpp servers (llama-cpp-python's own server, each
pinned to its own core), and the front's added latency against calling a backend directly.

    python benchmarks/bench_backends.py                      # 270M GGUF, 4 clients x 24 requests

Prints requests/s for: a backend called directly, the front with one backend, the front with two
(in the same run, the direct call as the baseline), and latency p50/p95 for each. Run it on a
quiet machine with at least 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

SERVER = """
import runpy, sys
from medgem.engines.llamacpp.native import import_llama_cpp
import_llama_cpp()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""
MODEL = "gemma-3-270m"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a server exited ({process.args})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer from {url}")


def llama_server(gguf: Path, core: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, "-c", SERVER, "--model", str(gguf),
         "--model_alias", MODEL, "--port", str(port), "--n_ctx", "1024", "--n_threads", "1",
         "--chat_format", "gemma", "--interrupt_requests", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    wait(url + "/models", process)
    return process, url


def front(backends: list[str], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "medgem", "serve", "--model", MODEL, "--port", str(port),
               "--audit-db", str(work / f"audit-{port}.sqlite"), "--max-queue", "64"]
    for url in backends:
        command += ["--backend", url]
    env = {**os.environ, "MEDGEM_API_KEYS": str(work / "no-keys.json")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait(f"http://127.0.0.1:{port}/healthz", process)
    return process, f"http://127.0.0.1:{port}/v1"


def load(url: str, clients: int, requests: int, tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    left = iter(range(requests))

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    index = next(left, None)
                if index is None:
                    return
                body = {"model": MODEL, "max_tokens": tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Name a bone of the hand ({index})."}]}
                began = time.perf_counter()
                ok = http.post(url + "/chat/completions", json=body).status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - began)
                    errors += not ok

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"rps": len(latencies) / wall, "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    from medgem.demo.build import demo_gguf_path

    gguf = demo_gguf_path()
    work = Path(tempfile.mkdtemp(prefix="medgem-bench-backends-"))
    started: list[subprocess.Popen[bytes]] = []

    def run(make: Callable[[], tuple[subprocess.Popen[bytes], str]]) -> str:
        process, url = make()
        started.append(process)
        return url

    try:
        one = run(lambda: llama_server(gguf, 0))
        two = run(lambda: llama_server(gguf, 1 % (os.cpu_count() or 1)))
        load(one, 1, 2, 2)  # warm-up
        rows = {"backend directly": load(one, args.clients, args.requests, args.tokens)}
        single = run(lambda: front([one], work))
        load(single, 1, 2, 2)
        rows["front, 1 backend"] = load(single, args.clients, args.requests, args.tokens)
        double = run(lambda: front([one, two], work))
        load(double, 1, 2, 2)
        rows["front, 2 backends"] = load(double, args.clients, args.requests, args.tokens)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(60)
    base = rows["backend directly"]
    print(f"270M Q4_K_M, llama-cpp-python server (1 thread, own core); {args.clients} clients x "
          f"{args.requests} requests, {args.tokens} tokens")
    print(f"{'':<18} | {'req/s':>6} | {'x direct':>8} | {'p50 s':>6} | {'p95 s':>6} | "
          f"{'+p50 ms':>7} | {'errors':>6}")
    print("-" * 72)
    for name, row in rows.items():
        print(f"{name:<18} | {row['rps']:>6.2f} | {row['rps'] / base['rps']:>8.2f} | "
              f"{row['p50']:>6.2f} | {row['p95']:>6.2f} | "
              f"{1000 * (row['p50'] - base['p50']):>7.0f} | {row['errors']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
