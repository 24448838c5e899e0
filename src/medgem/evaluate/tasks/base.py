"""What an evaluation task is: items from records, a prompt per item, a score per reply.

A task never runs a model; the runner does. Tasks are plain objects registered by name in
``medgem.evaluate.tasks``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from medgem.errors import DatasetError
from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.metrics import Interval, bootstrap_interval, wilson_interval
from medgem.structured import Constraint

T = TypeVar("T")
ImageRef = str | bytes  # a path (relative to the image root) or encoded image bytes


@dataclass(frozen=True)
class EvalItem:
    """One question of a benchmark, ready to prompt.

    Attributes:
        id: unique within the dataset (the dataset's own id when it has one, else "row-N").
        source: the file it came from; row: its row there (for messages).
        question: the user turn's text.
        reference: the expected answer, JSON-serialisable (a letter, a label, a text, a dict).
        category: the group it is reported under (exam step, subject, closed/open...).
        options: letter -> option text, for multiple choice.
        images: image paths or bytes, in order.
        system: the system prompt, if any.
    """

    id: str
    source: str
    row: int
    question: str
    reference: Any
    category: str = "all"
    options: dict[str, str] = field(default_factory=dict)
    images: tuple[ImageRef, ...] = ()
    system: str | None = None


@dataclass(frozen=True)
class Scored:
    """A reply, read and scored.

    Attributes:
        prediction: what was read from the reply (None when nothing could be read).
        parsed: False when the reply could not be read; it then counts as wrong.
        correct: exact right/wrong.
        score: the item's contribution to the mean metric (1.0/0.0, or an F1, a ROUGE-L...).
    """

    prediction: Any
    parsed: bool
    correct: bool
    score: float


@dataclass(frozen=True)
class LoadedData:
    """Items and what the loader learned about the data.

    Attributes:
        items: the items, in file order.
        benchmark: the benchmark the format identifies ("medqa"), None when unknown.
        skipped: reason -> rows left out on purpose (non-English SLAKE questions...).
        notes: settings the loader chose that affect the score.
    """

    items: list[EvalItem]
    benchmark: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse duplicate item ids: results are keyed by id, duplicates would be counted once.

        Raises:
            DatasetError: naming both rows.
        """
        seen: dict[str, EvalItem] = {}
        for item in self.items:
            first = seen.setdefault(item.id, item)
            if first is not item:
                raise DatasetError(
                    f"{item.source} row {item.row}: id '{item.id}' already used at row {first.row}",
                    "give every row a unique id",
                )


@dataclass(frozen=True)
class TaskOptions:
    """Task settings from the command line.

    Attributes:
        image_root: where relative image paths are looked up (default: the data's folder).
        uncertain: cxr-labels policy for CheXpert's -1: "ignore", "positive" or "negative".
        language: SLAKE question language to keep.
    """

    image_root: Path | None = None
    uncertain: str = "ignore"
    language: str = "en"


class Task:
    """The contract every task module fulfils; by default accuracy is the headline metric and
    thinking variants are not asked to think."""

    name: str
    description: str
    primary_metric = "accuracy"
    think = False  # ask thinking variants to think (the official MedQA prompt)
    # The built-in schema decoding is constrained to when the engine can (the prompt stays the
    # official one either way); None: free text.
    schema: Constraint | None = None
    right_or_wrong = True  # each item scores exactly 1 or 0 (compare: McNemar, else bootstrap)
    benchmark: str | None = None  # the benchmark every dataset of this task's format is

    def load(self, records: Sequence[Record], options: TaskOptions) -> LoadedData:
        """Turn dataset rows into items: one per row by :meth:`item`, unless a task overrides
        this (to skip rows, expand one row into several, or detect the benchmark).

        Raises:
            DatasetError: a row lacks a field or holds a bad value (names file and row).
        """
        items = [self.item(record, Path(options.image_root or record.source.parent))
                 for record in records]
        return LoadedData(items, self.benchmark)

    def item(self, record: Record, root: Path) -> EvalItem:
        """One row as an item; ``root`` is where its relative image paths are looked up.

        Raises:
            DatasetError: the row lacks a field or holds a bad value (names file and row).
        """
        raise NotImplementedError

    def score(self, item: EvalItem, reply: str) -> Scored:
        """Read and score one reply."""
        raise NotImplementedError

    def metrics(self, items: Sequence[EvalItem], scored: Sequence[Scored]) -> dict[str, Interval]:
        """The task's metrics (fractions 0-1, or BLEU 0-100) with 95% intervals."""
        return {"accuracy": proportion([s.correct for s in scored])}

    def notes(self) -> list[str]:
        """One-line notes for the report (a metric left out, and what to install for it)."""
        return []


# --- helpers shared by task modules ------------------------------------------------------------


def field_value(record: Record, *names: str, required: bool = True) -> Any:
    """The first of ``names`` present (case-insensitive) and not blank in a record.

    Raises:
        DatasetError: none is present and ``required``.
    """
    lowered = {k.lower(): v for k, v in record.data.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    if required:
        raise row_error(
            record,
            f"missing field '{names[0]}'" + (f" (or {', '.join(names[1:])})" if names[1:] else ""),
            f"fields present: {', '.join(sorted(record.data)) or 'none'}",
        )
    return None


def item_id(record: Record, *names: str) -> str:
    """The dataset's own id for a row, else "row-N" (N counted across files)."""
    value = field_value(record, *names, required=False) if names else None
    return str(value) if value is not None else f"{record.source.stem}-row-{record.row}"


def most_common(values: Sequence[str | None]) -> str | None:
    counted = Counter(v for v in values if v)
    return counted.most_common(1)[0][0] if counted else None


def proportion(correct: Sequence[bool]) -> Interval:
    """Accuracy with its Wilson interval."""
    hits = sum(correct)
    low, high = wilson_interval(hits, len(correct))
    return Interval(hits / len(correct) if correct else 0.0, low, high)


def bootstrapped(sample: Sequence[T], statistic: Callable[[Sequence[T]], float],
                 samples: int = 1000) -> Interval:
    """``statistic`` over ``sample`` with its percentile bootstrap interval."""
    return Interval(statistic(sample), *bootstrap_interval(sample, statistic, samples=samples))


def mean_with_bootstrap(scores: Sequence[float]) -> Interval:
    """Mean with a percentile bootstrap interval (0 for no scores)."""
    return bootstrapped(scores, lambda xs: sum(xs) / len(xs) if xs else 0.0)


def scored_label(label: str | None, reference: Any) -> Scored:
    """A reply read as one label (None: nothing read), right when it is the reference."""
    correct = label == reference
    return Scored(label, label is not None, correct, float(correct))


def image_ref(value: Any, record: Record, root: Path) -> ImageRef:
    """An image field as a path (resolved against ``root``) or bytes (datasets' Image feature)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise row_error(record, "the image field is empty", "give a file path or image bytes")
    path = Path(value)
    if path.is_absolute():
        return str(path)
    for base in (root, root / "images", root / "imgs"):
        if (base / path).exists():
            return str(base / path)
    return str(root / path)  # missing files fail at run time: that item is marked failed
