"""Validation harness: run MedGemma on medical benchmarks and the user's own data, compare runs,
and set the numbers beside the model card's.

Typical use::

    prepared = prepare(EvalConfig(task="mcq", data="medqa_test.jsonl"))
    run_evaluation(MedGemma.load("4b-it"), prepared, "runs/medqa")
    write_report("runs/medqa")
"""

from __future__ import annotations

from medgem.errors import DatasetError
from medgem.evaluate.compare import compare_markdown, compare_runs
from medgem.evaluate.datasets import Record, read_records
from medgem.evaluate.report import summarize_run, write_report
from medgem.evaluate.runner import EvalConfig, PreparedRun, RunOutcome, prepare, run_evaluation
from medgem.evaluate.tasks import TaskOptions, get_task, task_names

__all__ = ["DatasetError", "EvalConfig", "PreparedRun", "Record", "RunOutcome", "TaskOptions",
           "compare_markdown", "compare_runs", "get_task", "prepare", "read_records",
           "run_evaluation", "summarize_run", "task_names", "write_report"]
