"""Adapt MedGemma to your own data: LoRA/QLoRA adapters, closed by the validation harness.

Typical use::

    plan = plan_tuning(TuneConfig(data="my-cxr.jsonl", model="4b-it", out=Path("adapters/cxr")))
    outcome = train(plan)
    comparison = compare_base_and_tuned(plan, outcome.adapter)

Then ``MedGemma.load("4b-it", options={"adapter": "adapters/cxr"})`` answers with the adapter, and every
answer names it and its hash.
"""

from __future__ import annotations

from medgem.tune.closing import compare_base_and_tuned, merge_adapter
from medgem.tune.plan import LoraSettings, TuneConfig, TunePlan, plan_tuning
from medgem.tune.train import TrainOutcome, train

__all__ = [
    "LoraSettings",
    "TrainOutcome",
    "TuneConfig",
    "TunePlan",
    "compare_base_and_tuned",
    "merge_adapter",
    "plan_tuning",
    "train",
]
