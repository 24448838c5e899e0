"""What closes a fine-tuning run: base and tuned model on the held-out rows with the evaluation
harness, compared pairwise (exact McNemar or paired bootstrap, as `medgem eval compare`), and on
request a merged checkpoint.

Both models are loaded the way users load them (``MedGemma.load``, the tuned one with
``adapter=``), so the comparison also checks that the adapter loads and answers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from medgem.adapters import PARTIAL_SUFFIX, AdapterInfo
from medgem.tune.data import CHAT
from medgem.tune.plan import TunePlan

EVAL_FOLDER = "eval"
MERGED = "merged"


def answer_budget(plan: TunePlan) -> int:
    """Tokens the closing evaluation allows per answer: the longest held-out answer + 8."""
    from transformers import AutoTokenizer

    if plan.config.eval_max_new_tokens:
        return plan.config.eval_max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(str(plan.checkpoint.path))
    answers = [str(p) for e in plan.data.validation for t in e.turns if t.role == "assistant"
               for p in t.parts if isinstance(p, str)]
    longest = max((len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers),
                  default=32)
    return longest + 8


def compare_base_and_tuned(plan: TunePlan, adapter: AdapterInfo, *,
                           progress: bool = True) -> dict[str, Any] | None:
    """Run the held-out rows on the base and the tuned model and compare them pairwise.

    Returns:
        ``medgem.evaluate.compare_runs``'s result (with "markdown" added), or None for chat data,
        which no task scores (the validation losses are the comparison then).
    """
    from medgem.api import MedGemma
    from medgem.engines.options import HFOptions
    from medgem.evaluate import (
        EvalConfig,
        TaskOptions,
        compare_markdown,
        compare_runs,
        prepare,
        run_evaluation,
        write_report,
    )

    if plan.data.task == CHAT:
        return None
    config = plan.config
    data = config.validation_data or config.data
    eval_config = EvalConfig(
        task=plan.data.task, data=data, split=config.split if not config.validation_data else None,
        seed=config.seed, max_new_tokens=answer_budget(plan), think="off",
        options=TaskOptions(image_root=config.image_root),
    )
    prepared = prepare(eval_config)
    held = {e.id for e in plan.data.validation}
    prepared = dataclasses.replace(prepared, items=[i for i in prepared.items if i.id in held])
    folder = config.out / EVAL_FOLDER
    runs: dict[str, Path] = {}
    for label, adapter_path in (("base", None), ("tuned", str(adapter.path))):
        run_folder = folder / label
        if run_folder.exists():
            shutil.rmtree(run_folder)  # a re-run compares afresh, never half of an older run
        model = MedGemma.load(config.model, engine="hf", options=HFOptions(
            device=plan.device, dtype=str(plan.dtype).removeprefix("torch."),
            quantize=config.quantize, progress=False, adapter=adapter_path),
                              audit=config.audit, surface="cli:tune")
        try:
            run_evaluation(model, prepared, run_folder, progress=progress)
        finally:
            model.close()
        write_report(run_folder)
        runs[label] = run_folder
    result = compare_runs(runs["base"], runs["tuned"])
    result["markdown"] = compare_markdown(result)
    (config.out / "comparison.md").write_text(result["markdown"])
    (config.out / "comparison.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def merge_adapter(plan: TunePlan, adapter: AdapterInfo, target: Path | None = None) -> Path:
    """Write the base model with the adapter merged in (``out/merged``), loadable without PEFT.

    Weights are merged in the training dtype (float32 on CPUs); the folder appears only when
    complete. Its config.json names the adapter it holds.
    """
    from medgem.adapters import save_merged

    target = target or plan.config.out / MERGED
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    dtype = plan.dtype if not plan.config.quantize else "bfloat16"  # merge into full weights
    save_merged(adapter, plan.checkpoint.path, plan.checkpoint.multimodal, partial, dtype)
    if target.exists():
        shutil.rmtree(target)
    partial.replace(target)
    return target
