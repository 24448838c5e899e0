"""llama.cpp decode when something else takes a core, for each way its threads may wait.

llama.cpp's CPU backend runs its threads through OpenMP; waiting threads spin, so when another
process takes one of the cores the whole decode stalls behind the descheduled thread (measured
before: 4.5 tok/s alone, 0.19 with a load average of 5 on 2 cores). Each row runs in its own
process (OpenMP reads its settings once), alone and beside one spinning process:

    python benchmarks/bench_contention.py                 # the 270M demo GGUF
    python benchmarks/bench_contention.py --model /tmp/medgem-bench-4b-gguf-q4_k_m/model.gguf

The engine's default is the row it ships with (see engines/llamacpp_native.py); the baseline is
OpenMP's own default, in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROWS = [
    ("OpenMP default (spin)", {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}),
    ("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": ""}),
    ("OMP_WAIT_POLICY=passive", {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": ""}),
    ("threads = cores - 1", {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "", "BENCH_THREADS": "-1"}),
]


def child(model: str, tokens: int) -> None:
    from medgem.api import MedGemma
    from medgem.request import GenerationOptions, Message, Request, TextPart

    threads = None
    if os.environ.get("BENCH_THREADS") == "-1":
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
    mg = MedGemma.load(model, engine="llamacpp", options={"n_ctx": 1024, "threads": threads}, audit=False)
    request = Request((Message("user", (TextPart("The patient presents with"),)),),
                      GenerationOptions(max_new_tokens=tokens), template="completion")
    list(mg.engine.generate(request))  # warm-up
    final = list(mg.engine.generate(request))[-1]
    print(json.dumps({"tok_s": final.timings.decode_tokens_per_s}))


def _spin() -> None:
    while True:
        pass


def run_row(model: str, tokens: int, env: dict[str, str], busy: bool) -> float:
    full = {k: v for k, v in {**os.environ, **env}.items() if v != ""}
    spinner = multiprocessing.Process(target=_spin, daemon=True) if busy else None
    if spinner:
        spinner.start()
    try:
        done = subprocess.run([sys.executable, __file__, "--child", model, str(tokens)],
                              capture_output=True, text=True, env=full, check=False, timeout=900)
    finally:
        if spinner:
            spinner.kill()
    if done.returncode != 0:
        return float("nan")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["tok_s"])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF (default: the 270M demo)")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from medgem.demo.build import demo_gguf_path

        model = str(demo_gguf_path())
    print(f"{Path(model).name}, {args.tokens} tokens, {len(os.sched_getaffinity(0))} cores")
    print(f"{'threads wait by':<26} | {'alone tok/s':>11} | {'1 busy core tok/s':>17} | {'kept':>6}")
    print("-" * 70)
    for name, env in ROWS:
        alone = run_row(model, args.tokens, env, busy=False)
        busy = run_row(model, args.tokens, env, busy=True)
        print(f"{name:<26} | {alone:>11.2f} | {busy:>17.2f} | {busy / alone:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
