"""The per-item results file and what is computed from it.

``results.jsonl`` gets one line per finished item, appended and fsynced as it finishes, so a
killed run loses at most the item in flight. An item may appear more than once (a failed item
retried on resume); the last line for an id wins, so nothing is counted twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.errors import InputError
from medgem.evaluate.metrics import Interval
from medgem.evaluate.model_card import CardResult, published_result
from medgem.evaluate.tasks import EvalItem, Scored, Task

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "run.json"


class ResultLog:
    """Append-only JSONL of item results; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def repair(self) -> int:
        """Cut a half-written last line (a run killed mid-write). Returns bytes removed."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return len(data) - keep

    def append(self, result: dict[str, Any]) -> None:
        line = json.dumps(result, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's run.json.

    Raises:
        InputError: it is not a JSON object (cut short, or edited by hand).
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        value = exc
    if not isinstance(value, dict):
        raise InputError(f"{path} is not a readable run manifest"
                         + (f" ({value})" if isinstance(value, Exception) else " (not a JSON object)"),
                         "run the evaluation again into a new --out folder")
    return value


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """id -> latest result for that id, in first-seen order; unreadable lines are skipped."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return latest
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash; its item runs again on resume
            if isinstance(record, dict) and "id" in record:
                latest[str(record["id"])] = record
    return latest


@dataclass(frozen=True)
class CategoryScore:
    category: str
    n: int
    value: Interval


@dataclass(frozen=True)
class Summary:
    """A run's numbers, as written to report.json and report.md.

    Attributes:
        metrics: metric -> value with 95% interval, over scored items.
        primary: the task's headline metric.
        categories: the primary metric per category.
        n_total: items in the run; n_scored: items with a reply; n_failed: items that errored.
        unparseable: scored items whose reply could not be read (counted wrong).
        failed: items that failed, with the reason.
        card: the model card's number for this model and benchmark, if any.
        card_comparable: the card's metric is one this task computes.
        within_interval: the card's number lies inside this run's 95% interval.
        notes: the task's one-line notes (a metric it could not compute, and why).
    """

    metrics: dict[str, Interval]
    primary: str
    categories: list[CategoryScore]
    n_total: int
    n_scored: int
    n_failed: int
    unparseable: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    card: CardResult | None
    card_comparable: bool
    within_interval: bool | None
    notes: tuple[str, ...] = ()

    @property
    def headline(self) -> Interval:
        return self.metrics[self.primary]


def scored_pairs(results: Sequence[dict[str, Any]]) -> tuple[list[EvalItem], list[Scored]]:
    """Rebuild (item, scored) pairs from result lines with status "ok"."""
    items: list[EvalItem] = []
    scored: list[Scored] = []
    for r in results:
        if r.get("status") != "ok":
            continue
        items.append(EvalItem(str(r["id"]), str(r.get("source", "")), int(r.get("row", 0)), "",
                              r.get("reference"), str(r.get("category", "all"))))
        scored.append(Scored(r.get("prediction"), bool(r.get("parsed")), bool(r.get("correct")),
                             float(r.get("score", 0.0))))
    return items, scored


def summarize(task: Task, results: Sequence[dict[str, Any]], *, n_total: int, variant: str | None,
              benchmark: str | None) -> Summary:
    """Compute a run's metrics, breakdown and model-card comparison from its result lines."""
    items, scored = scored_pairs(results)
    metrics = task.metrics(items, scored) if items else {task.primary_metric: Interval(0.0, 0.0, 0.0)}
    categories = []
    for category in sorted({i.category for i in items}):
        picked = [(i, s) for i, s in zip(items, scored, strict=True) if i.category == category]
        sub = task.metrics([i for i, _ in picked], [s for _, s in picked])
        categories.append(CategoryScore(category, len(picked), sub[task.primary_metric]))
    unparseable = [
        {"id": r["id"], "row": r.get("row"), "reply": str(r.get("reply", ""))[:300]}
        for r in results if r.get("status") == "ok" and not r.get("parsed")
    ]
    failed = [{"id": r["id"], "row": r.get("row"), "error": r.get("error", "")}
              for r in results if r.get("status") != "ok"]
    card = published_result(variant, benchmark)
    comparable = card is not None and card.metric in metrics
    within = None
    if card is not None and comparable and items:
        within = metrics[card.metric].contains(card.value / 100)
    return Summary(metrics, task.primary_metric, categories, n_total, len(items), len(failed),
                   unparseable, failed, card, comparable, within, tuple(task.notes()))
