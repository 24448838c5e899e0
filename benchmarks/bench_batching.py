"""Many questions at once on llama.cpp: the concurrency curve, contention, and the eval harness.

One invocation measures, on one llama.cpp engine loaded with --parallel 8 (a MedGemma-4B-shaped
Q4_K_M by default, random weights):
  - 1, 2, 4 and 8 streams started together: aggregate tok/s, per-stream decode tok/s, time to
    first token p50/p95, peak RSS; the single stream is the baseline, in the same run;
  - 4 streams again with one busy core beside the engine (a spinning child process);
  - `medgem eval` on 40 generated MCQ items with --concurrency 4 against --concurrency 1
    (the 270M demo GGUF, real weights): questions/min and whether the reports agree.

    python benchmarks/bench_batching.py                          # ~10 min on 2 cores
    python benchmarks/bench_batching.py --model other.gguf --tokens 32 --skip-eval

Run it on a quiet machine: llama.cpp's threads spin at barriers, so anything else on the cores
changes the numbers (that is what the contention row shows).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = Path("/tmp/medgem-bench-4b-gguf-q4_k_m/model.gguf")
TOPICS = ["community-acquired pneumonia", "pulmonary embolism", "heart failure", "sepsis",
          "diabetic ketoacidosis", "asthma", "tuberculosis", "stroke"]


def _prompt(index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return (f"Question {index}: summarise the first-line workup of {topic} in an adult, the "
            "findings that change management, and when to escalate care. ") * 3


def curve_point(model: Any, streams: int, tokens: int) -> dict[str, float]:
    """``streams`` requests started together; their Finished events' timings."""
    from medgem.engines.base import Finished
    from medgem.request import GenerationOptions, Message, Request, TextPart

    finals: list[Finished] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        request = Request((Message("user", (TextPart(_prompt(index)),)),),
                          GenerationOptions(max_new_tokens=tokens), template="completion")
        for event in model.batcher.generate(model.engine.prepare(request)):
            if isinstance(event, Finished):
                with lock:
                    finals.append(event)

    began = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    first = sorted(f.timings.first_token_s for f in finals)
    generated = sum(f.usage.completion_tokens for f in finals)
    return {
        "streams": streams,
        "aggregate_tok_s": generated / wall,
        "per_stream_decode_tok_s": statistics.mean(f.timings.decode_tokens_per_s for f in finals),
        "ttft_p50_s": statistics.median(first),
        "ttft_p95_s": first[min(len(first) - 1, round(0.95 * (len(first) - 1)))],
        "wall_s": wall,
        "tokens": generated,
    }


def _spin() -> None:
    while True:
        pass


def eval_rate(model: Path, concurrency: int, folder: Path, data: Path) -> dict[str, Any]:
    out = folder / f"run-{concurrency}"
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "medgem", "eval", "mcq", str(data), "--model", str(model),
         "--max-new-tokens", "8", "--out", str(out), "--no-progress", "--no-audit",
         "--concurrency", str(concurrency), "--n-ctx", "1024"],
        capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"eval failed: {result.stderr.strip()}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "per_min": 60 * len(rows) / wall,
            "answers": {r["id"]: r["reply"] for r in rows},
            "metrics": json.loads((out / "report.json").read_text())["metrics"]}


def mcq_items(path: Path, count: int) -> Path:
    with path.open("w") as handle:
        for index in range(count):
            topic = TOPICS[index % len(TOPICS)]
            options = {"A": "Chest radiograph", "B": "CT angiography", "C": "Blood culture",
                       "D": "Echocardiography"}
            letter = "ABCD"[index % 4]
            handle.write(json.dumps({
                "question": f"Item {index}: which test comes first for {topic}?",
                "options": options, "answer": options[letter], "answer_idx": letter}) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a GGUF (default: 4B-shaped Q4_K_M)")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per stream")
    parser.add_argument("--n-ctx", type=int, default=1024, help="context per stream")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    if not args.model.exists():
        raise SystemExit(f"no model at {args.model}: run benchmarks/bench_llamacpp.py first "
                         "(it builds the 4B-shaped Q4_K_M), or pass --model")

    from medgem.api import MedGemma

    model = MedGemma.load(args.model, engine="llamacpp", options={"n_ctx": args.n_ctx, "parallel": 8}, audit=False)
    curve_point(model, 1, 4)  # warm-up
    rows, decode = [], []
    for n in (1, 2, 4, 8):
        rows.append(curve_point(model, n, args.tokens))  # cold: every prompt prefilled
        # again: each prompt is still in its slot (prefix reuse), so this row is decode alone
        decode.append(curve_point(model, n, args.tokens))
    spinner = multiprocessing.Process(target=_spin, daemon=True)
    spinner.start()
    try:
        busy = curve_point(model, 4, args.tokens)
    finally:
        spinner.kill()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.close()

    base = rows[0]["aggregate_tok_s"]
    print(f"model: {args.model}  (--parallel 8, --n-ctx {args.n_ctx} per stream, "
          f"{args.tokens} new tokens per stream, ~{len(_prompt(0)) // 4}-token prompts)")
    print(f"{'streams':>8} | {'aggregate tok/s':>15} | {'x 1 stream':>10} | "
          f"{'per-stream decode tok/s':>23} | {'TTFT p50 s':>10} | {'TTFT p95 s':>10}")
    print("-" * 92)
    for row in [*rows, {**busy, "streams": "4 busy"}]:
        print(f"{row['streams']!s:>8} | {row['aggregate_tok_s']:>15.2f} | "
              f"{row['aggregate_tok_s'] / base:>10.2f} | {row['per_stream_decode_tok_s']:>23.2f} | "
              f"{row['ttft_p50_s']:>10.2f} | {row['ttft_p95_s']:>10.2f}")
    print("decode alone (the same prompts again: each still in its slot, one token to prefill)")
    for row in decode:
        print(f"{row['streams']!s:>8} | {row['aggregate_tok_s']:>15.2f} | "
              f"{row['aggregate_tok_s'] / decode[0]['aggregate_tok_s']:>10.2f} | "
              f"{row['per_stream_decode_tok_s']:>23.2f} | {row['ttft_p50_s']:>10.2f} | "
              f"{row['ttft_p95_s']:>10.2f}")
    print(f"peak RSS: {rss_gib:.2f} GiB (8 slots allocated)")
    print("'4 busy': 4 streams with one core taken by a spinning process")

    if not args.skip_eval:
        from medgem.demo.build import demo_gguf_path

        with tempfile.TemporaryDirectory(prefix="medgem-bench-eval-") as folder:
            data = mcq_items(Path(folder) / "mcq.jsonl", 40)
            serial = eval_rate(demo_gguf_path(), 1, Path(folder), data)
            batched = eval_rate(demo_gguf_path(), 4, Path(folder), data)
        same = sum(serial["answers"][k] == batched["answers"].get(k) for k in serial["answers"])
        print()
        print(f"{'eval, 40 MCQ (270M Q4_K_M)':<28} | {'wall s':>7} | {'questions/min':>13}")
        print("-" * 55)
        print(f"{'--concurrency 1':<28} | {serial['wall_s']:>7.1f} | {serial['per_min']:>13.1f}")
        print(f"{'--concurrency 4':<28} | {batched['wall_s']:>7.1f} | {batched['per_min']:>13.1f}")
        print(f"ratio: {batched['per_min'] / serial['per_min']:.2f}x; identical replies: "
              f"{same}/{len(serial['answers'])}; same metrics: {serial['metrics'] == batched['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
