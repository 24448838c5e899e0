"""`medgem tune DATA --model M --out DIR`: train a LoRA adapter, then compare base and tuned.

Reads the dataset formats `medgem eval` reads (or JSONL rows of `messages`), holds out a
validation split, trains with the official notebook's LoRA settings, seals the adapter, and
ends with the paired comparison of base and tuned model on the held-out rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medgem.cli.common import add_audit_flags, number_in, whole_number


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune", help="fine-tune a LoRA/QLoRA adapter on your data and validate it",
        description="Train a LoRA adapter (QLoRA with --quantize 4bit on CUDA) on a dataset "
                    "`medgem eval` reads, then compare base and tuned on the held-out rows.",
    )
    parser.add_argument("data", type=Path, help="dataset file or folder, or JSONL of {messages}")
    parser.add_argument("--model", "-m", required=True,
                        help="base checkpoint folder, variant (4b-it) or hub id (transformers format)")
    parser.add_argument("--out", type=Path, required=True, help="run folder; the adapter ends in OUT/adapter")
    data = parser.add_argument_group("data")
    data.add_argument("--task", default="auto",
                      help="auto (from the fields), chat, mcq, pubmedqa, vqa, report or cxr-labels")
    data.add_argument("--split", help="split to read from a datasets folder")
    data.add_argument("--validation", type=number_in(0.0, 1.0), default=0.1,
                      help="fraction held out for validation and the closing evaluation (default 0.1)")
    data.add_argument("--validation-data", type=Path, help="held-out rows from a separate file instead")
    data.add_argument("--image-root", type=Path, help="folder image paths are relative to")
    training = parser.add_argument_group("training (defaults: the official notebook's)")
    training.add_argument("--epochs", type=number_in(0.0, open_low=True), default=1.0, help="passes over the data (default 1)")
    training.add_argument("--max-steps", type=whole_number(1), help="optimizer steps (overrides --epochs)")
    training.add_argument("--batch-size", type=whole_number(1), default=4, help="examples per forward pass (default 4)")
    training.add_argument("--grad-accum", type=whole_number(1), default=4, help="passes per optimizer step (default 4)")
    training.add_argument("--learning-rate", type=number_in(0.0, open_low=True), default=2e-4, help="default 2e-4")
    training.add_argument("--lora-r", type=whole_number(1), default=16, help="LoRA rank (default 16)")
    training.add_argument("--lora-alpha", type=whole_number(1), default=16, help="LoRA alpha (default 16)")
    training.add_argument("--lora-dropout", type=number_in(0.0, 1.0), default=0.05, help="default 0.05")
    training.add_argument("--no-save-embeddings", action="store_true",
                          help="pure LoRA: do not train lm_head/embed_tokens whole (smaller; "
                               "llama.cpp applies it directly)")
    training.add_argument("--quantize", choices=["4bit"], help="QLoRA: NF4 + double quantization (CUDA only)")
    training.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    training.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs, float32 on CPUs), bfloat16, float32")
    training.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    training.add_argument("--seed", type=int, default=0, help="split, initialisation and data order (default 0)")
    training.add_argument("--save-steps", type=whole_number(1), default=50, help="checkpoint every N steps (default 50)")
    training.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    after = parser.add_argument_group("after training")
    after.add_argument("--name", help="the adapter's name in answers and audit records (default: --out's name)")
    after.add_argument("--merge", action="store_true", help="also write a merged checkpoint to OUT/merged")
    after.add_argument("--no-eval", action="store_true", help="skip the base-vs-tuned comparison")
    after.add_argument("--eval-max-new-tokens", type=whole_number(1),
                       help="answer budget there (default: the longest held-out answer + 8)")
    add_audit_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.tune import (
        LoraSettings,
        TuneConfig,
        compare_base_and_tuned,
        merge_adapter,
        plan_tuning,
        train,
    )

    config = TuneConfig(
        data=str(args.data), model=args.model, out=args.out, task=args.task, split=args.split,
        validation=args.validation,
        validation_data=str(args.validation_data) if args.validation_data else None,
        image_root=args.image_root, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, learning_rate=args.learning_rate,
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                          save_embeddings=not args.no_save_embeddings),
        quantize=args.quantize, device=args.device, dtype=args.dtype, seed=args.seed,
        save_steps=args.save_steps, gradient_checkpointing=args.gradient_checkpointing,
        name=args.name, merge=args.merge, evaluate=not args.no_eval,
        eval_max_new_tokens=args.eval_max_new_tokens,
        progress=not args.no_progress and sys.stderr.isatty(),
        audit=False if args.no_audit else (args.audit_db or True),
    )
    plan = plan_tuning(config)  # bad data, model or settings fail here, before any loading
    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr))
    say(f"medgem tune: {len(plan.data.train)} training and {len(plan.data.validation)} held-out "
        f"{plan.data.task} examples, {plan.steps} steps on {plan.device}")
    try:
        outcome = train(plan, resume=args.resume)
    except KeyboardInterrupt:
        print(f"medgem: stopped; continue with the same command and --resume (checkpoints in "
              f"{config.out / 'checkpoints'})", file=sys.stderr)
        raise
    adapter = outcome.adapter
    merged = merge_adapter(plan, adapter) if config.merge else None
    comparison = (compare_base_and_tuned(plan, adapter, progress=config.progress)
                  if config.evaluate else None)
    if args.json:
        print(json.dumps({
            "adapter": str(adapter.path), "name": adapter.name, "sha256": adapter.sha256,
            "steps": outcome.steps, "resumed_from": outcome.resumed_from,
            "seconds": round(outcome.seconds, 1), "tokens_per_s": round(outcome.tokens_per_s, 1),
            "validation_loss": {"base": outcome.loss_before, "tuned": outcome.loss_after},
            "merged": str(merged) if merged else None,
            "comparison": {k: v for k, v in (comparison or {}).items() if k != "markdown"} or None,
        }, indent=2, default=str))
        return 0
    resumed = f", resumed at step {outcome.resumed_from}" if outcome.resumed_from else ""
    print(f"trained {outcome.steps} steps{resumed} in {outcome.seconds:.1f} s "
          f"({outcome.tokens_per_s:.0f} tokens/s); validation loss "
          f"{outcome.loss_before:.3f} -> {outcome.loss_after:.3f}")
    print(f"adapter: {adapter.path} ({adapter.label})")
    if merged:
        print(f"merged:  {merged}")
    if comparison:
        print()
        print(comparison["markdown"], end="")
    elif config.evaluate:
        print("(chat data: no task scores free answers; the validation loss is the comparison)")
    print(f"\nuse it: medgem ask --model {config.model} --adapter {config.out} \"your question\"")
    return 0
