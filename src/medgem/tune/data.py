"""Training examples from the datasets `medgem eval` reads, plus plain chat JSONL of `messages`.

An evaluation row becomes one conversation: the prompt exactly as the harness will ask it (the
task's question, images and system text), then the reference answer as the assistant's turn.
So the closing evaluation asks the tuned model the way it was trained. Nothing here imports
torch: bad data is found before any weights are loaded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgem.evaluate.datasets import DatasetError, Record, read_records, row_error
from medgem.evaluate.tasks import EvalItem, LoadedData, TaskOptions, get_task, task_names
from medgem.evaluate.tasks.base import ImageRef, image_ref, item_id
from medgem.evaluate.tasks.cxr_labels import FINDINGS

CHAT = "chat"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    """One message of a training conversation: text pieces and image references, in order."""

    role: str
    parts: tuple[str | ImageRef | Path, ...]

    @property
    def images(self) -> tuple[ImageRef | Path, ...]:
        return tuple(p for p in self.parts if isinstance(p, bytes | Path))


@dataclass(frozen=True)
class Example:
    """One training conversation.

    Attributes:
        id: the row's id (unique).
        source, row: where it came from, for messages.
        turns: the conversation; assistant turns are what the model learns to write.
        item: the evaluation item it came from (None for chat rows), for the closing evaluation.
    """

    id: str
    source: str
    row: int
    turns: tuple[Turn, ...]
    item: EvalItem | None = None

    @property
    def images(self) -> tuple[ImageRef | Path, ...]:
        return tuple(ref for turn in self.turns for ref in turn.images)

    @property
    def where(self) -> str:
        return f"{self.source} row {self.row}"


@dataclass(frozen=True)
class TuneData:
    """Examples split into training and held-out validation.

    Attributes:
        task: "chat" or the evaluation task the rows were read as ("mcq").
        train, validation: the split (seeded, disjoint).
    """

    task: str
    train: list[Example]
    validation: list[Example]


def target_text(task: str, item: EvalItem) -> str:
    """The answer a model should write for an evaluation item, in a form the task's scorer reads.

    Raises:
        DatasetError: a task with no written answer form.
    """
    if task == "mcq":
        return f"({item.reference}) {item.options[item.reference]}"
    if task in ("pubmedqa", "vqa", "report"):
        return str(item.reference)
    if task == "cxr-labels":
        present = [name for name in FINDINGS if item.reference.get(name)]
        return ", ".join(present) if present else "none"
    raise DatasetError(f"the {task} task has no answer form to train on",
                       f"use one of: {', '.join([CHAT, *task_names()])}")


def detect_task(records: Sequence[Record]) -> str:
    """The task a dataset's fields identify ("chat" for rows of `messages`).

    Raises:
        DatasetError: no known format (names the file and row).
    """
    first = records[0]
    fields = {k.lower() for k in first.data}
    if "messages" in fields:
        return CHAT
    if fields & {"options", "opa", "choices", "answer_options"}:
        return "mcq"
    if "final_decision" in fields or "contexts" in fields:
        return "pubmedqa"
    if {f.lower() for f in FINDINGS} <= fields:
        return "cxr-labels"
    if fields & {"findings", "report", "impression"}:
        return "report"
    if "question" in fields and "answer" in fields:
        return "vqa"
    raise row_error(
        first, f"cannot tell the dataset's format from its fields ({', '.join(sorted(fields))})",
        f"name it with --task ({', '.join([CHAT, *task_names()])}), or give rows of "
        "{'messages': [...]}",
    )


def load_examples(data: str | Path, task: str = "auto", *, split: str | None = None,
                  image_root: Path | None = None) -> tuple[str, list[Example], LoadedData | None]:
    """Read a dataset as training conversations.

    Args:
        data: a file or folder `medgem eval` reads, or JSONL rows of {"messages": [...]}.
        task: "auto" (from the fields), "chat", or an evaluation task name.
        split: the split of a datasets folder.
        image_root: where relative image paths are looked up.

    Returns:
        (task name, examples in file order, the task loader's result or None for chat).

    Raises:
        DatasetError: a bad format, a bad row or a missing image (names the file and row).
    """
    records = read_records(data, split)
    name = detect_task(records) if task == "auto" else task
    if name == CHAT:
        examples = [_chat_example(record, image_root) for record in records]
        loaded = None
    else:
        evaluation = get_task(name)
        name = evaluation.name
        loaded = evaluation.load(records, TaskOptions(image_root=image_root))
        examples = [_task_example(name, item) for item in loaded.items]
    if not examples:
        raise DatasetError(f"{data}: no {name} rows to train on",
                           "check that the file is in the task's format")
    _check_images(examples)
    return name, examples, loaded


def split_examples(examples: Sequence[Example], validation: float, seed: int) -> tuple[
        list[Example], list[Example]]:
    """A seeded, disjoint (train, validation) split; file order kept inside each.

    Raises:
        DatasetError: too few rows for both parts.
    """
    if not 0 < validation < 1:
        raise DatasetError(f"--validation must be between 0 and 1, got {validation}")
    count = max(1, round(len(examples) * validation))
    if len(examples) - count < 1:
        raise DatasetError(f"{len(examples)} row(s) are too few to hold some out for validation",
                           "give more rows, or a separate --validation-data file")
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def _task_example(task: str, item: EvalItem) -> Example:
    turns: list[Turn] = []
    if item.system:
        turns.append(Turn("system", (item.system,)))
    images = tuple(Path(i) if isinstance(i, str) else i for i in item.images)
    turns.append(Turn("user", (*images, item.question)))
    turns.append(Turn("assistant", (target_text(task, item),)))
    return Example(item.id, item.source, item.row, tuple(turns), item)


def _chat_example(record: Record, image_root: Path | None) -> Example:
    messages = record.data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise row_error(record, "'messages' must be a non-empty list of {role, content} objects")
    root = image_root or record.source.parent
    turns = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise row_error(record, f"message {number} needs a role of {', '.join(ROLES)}")
        turns.append(Turn(message["role"], tuple(_chat_parts(message.get("content"), record,
                                                             number, root))))
    if turns[-1].role != "assistant":
        raise row_error(record, "the last message must be the assistant's (the answer to learn)")
    if any(t.images for t in turns if t.role == "assistant"):
        raise row_error(record, "images can only be in system or user messages")
    return Example(item_id(record, "id"), str(record.source), record.row, tuple(turns))


def _chat_parts(content: Any, record: Record, number: int, root: Path) -> list[str | ImageRef | Path]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise row_error(record, f"message {number}: content must be text or a list of parts")
    parts: list[str | ImageRef | Path] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("image", "image_url"):
            value = part.get("image") or part.get("path") or part.get("image_url") or part.get("url")
            if isinstance(value, dict):
                value = value.get("url") or value.get("path") or value
            if isinstance(value, str) and value.startswith("data:"):
                parts.append(_data_url_bytes(value, record, number))
                continue
            ref = image_ref(value, record, root)
            parts.append(Path(ref) if isinstance(ref, str) else ref)
        else:
            raise row_error(record, f"message {number}: a content part of type {kind!r}",
                            "use {'type': 'text', 'text': ...} or {'type': 'image', 'image': PATH}")
    return parts


def _data_url_bytes(url: str, record: Record, number: int) -> bytes:
    import base64
    import binascii

    _, _, payload = url.partition(",")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise row_error(record, f"message {number}: an image data URL is not base64") from exc


def _check_images(examples: Sequence[Example]) -> None:
    """Every image file must exist before training starts, not fail at step 700."""
    for example in examples:
        for ref in example.images:
            if isinstance(ref, Path) and not ref.exists():
                raise DatasetError(f"{example.where}: image '{ref}' not found",
                                   "check the path, or set --image-root to the images' folder")
