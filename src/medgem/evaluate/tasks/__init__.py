"""The task registry: one name -> one module, aliases in one place."""

from __future__ import annotations

import importlib

from medgem.errors import InputError
from medgem.evaluate.tasks.base import EvalItem, LoadedData, Scored, Task, TaskOptions

TASKS: dict[str, str] = {
    "mcq": "medgem.evaluate.tasks.mcq",
    "pubmedqa": "medgem.evaluate.tasks.pubmedqa",
    "vqa": "medgem.evaluate.tasks.vqa",
    "cxr-labels": "medgem.evaluate.tasks.cxr_labels",
    "report": "medgem.evaluate.tasks.report_generation",
    "volume-classification": "medgem.evaluate.tasks.volume_classification",
    "longitudinal": "medgem.evaluate.tasks.longitudinal",
    "boxes": "medgem.evaluate.tasks.boxes",
    "lab-extraction": "medgem.evaluate.tasks.lab_extraction",
    "wsi-report": "medgem.evaluate.tasks.wsi_report",
    "ehrqa": "medgem.evaluate.tasks.ehrqa",
}
ALIASES: dict[str, str] = {
    "medqa": "mcq", "medmcqa": "mcq", "mmlu": "mcq", "afrimed-qa": "mcq", "cxr": "cxr-labels",
    "chexpert": "cxr-labels", "vqa-rad": "vqa", "slake": "vqa", "ct": "volume-classification",
    "mri": "volume-classification", "ct-rate": "volume-classification", "ms-cxr-t": "longitudinal",
    "chest-imagenome": "boxes", "anatomy-boxes": "boxes", "lab-report": "lab-extraction",
    "wsi-path": "wsi-report", "ehr-qa": "ehrqa",
}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task registered under a name or alias.

    Raises:
        InputError: no such task.
    """
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise InputError(f"unknown evaluation task '{name}'", f"choose one of: {', '.join(TASKS)}")
    task: Task = importlib.import_module(TASKS[key]).TASK
    return task


__all__ = ["TASKS", "EvalItem", "LoadedData", "Scored", "Task", "TaskOptions", "get_task", "task_names"]
