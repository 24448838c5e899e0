"""Multiple-choice QA: MedQA (4/5 options), MedMCQA, MMLU medical subsets, AfriMed-QA.

The official MedQA prompt: temperature 0, the system message ``SYSTEM INSTRUCTION: think silently
if needed.`` (thinking variants), the answer read as the final option letter.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import extract_choice
from medgem.evaluate.tasks import base

LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the letter of the correct option."


def format_question(question: str, options: dict[str, str]) -> str:
    """The question, its options one per line as "(A) text", then the answer instruction."""
    lines = "\n".join(f"({letter}) {text}" for letter, text in options.items())
    return f"{question.strip()}\n\n{lines}\n\n{INSTRUCTION}"


def as_letter(answer: Any, options: dict[str, str], record: Record, base: int = 0) -> str:
    """An answer given as a letter, an index or the option's text -> the letter."""
    if isinstance(answer, bool):
        raise row_error(record, f"answer {answer!r} is not a letter, index or option text")
    if isinstance(answer, int | float) or (isinstance(answer, str) and answer.strip().isdigit()):
        index = int(float(answer)) - base
        letters = list(options)
        if not 0 <= index < len(letters):
            raise row_error(record, f"answer index {answer} is out of range for {len(letters)} options")
        return letters[index]
    text = str(answer).strip()
    if text.upper() in options:
        return text.upper()
    for letter, option in options.items():
        if option.strip().lower() == text.lower():
            return letter
    raise row_error(record, f"answer {text!r} is not one of the options {', '.join(options)}")


def options_from(value: Any, record: Record) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)  # AfriMed-QA stores options as a JSON string
        except json.JSONDecodeError as exc:
            raise row_error(record, "the options field is not a list or an object") from exc
    if isinstance(value, dict):
        options = {}
        for i, (key, text) in enumerate(value.items()):
            letter = key.strip().upper() if len(key.strip()) == 1 else LETTERS[i]
            options[letter] = str(text)
        return options
    if isinstance(value, list | tuple):
        return {LETTERS[i]: str(text) for i, text in enumerate(value)}
    raise row_error(record, "the options field is not a list or an object")


def _parse(record: Record, cop_base: int) -> tuple[base.EvalItem | None, str | None]:
    """One row -> (item, benchmark detected from its format)."""
    data = {k.lower(): v for k, v in record.data.items()}
    question = str(base.field_value(record, "question", "sent1"))
    benchmark: str | None
    ids: tuple[str, ...] = ("id",)
    if "opa" in data:  # MedMCQA
        benchmark = "medmcqa"
        options = {
            letter: str(data[f"op{letter.lower()}"])
            for letter in "ABCDE" if data.get(f"op{letter.lower()}") not in (None, "")
        }
        letter = as_letter(base.field_value(record, "cop"), options, record, base=cop_base)
        category = str(data.get("subject_name") or "all")
    elif "answer_options" in data:  # AfriMed-QA: MCQ rows only
        if not data.get("answer_options") or str(data.get("question_type", "mcq")).lower() != "mcq":
            return None, "afrimed-qa"
        benchmark, ids = "afrimed-qa", ("sample_id", "id")
        options = options_from(data["answer_options"], record)
        raw_answer = str(base.field_value(record, "correct_answer"))
        keys = list(json.loads(data["answer_options"]) if isinstance(data["answer_options"], str)
                    else data["answer_options"])
        letter = (list(options)[keys.index(raw_answer)] if raw_answer in keys
                  else as_letter(raw_answer, options, record))
        category = str(data.get("specialty") or "all")
    elif "choices" in data and "subject" in data:  # MMLU
        benchmark = "mmlu-med"
        options = options_from(data["choices"], record)
        letter = as_letter(base.field_value(record, "answer"), options, record)
        category = str(data["subject"])
    else:
        options = options_from(base.field_value(record, "options", "choices"), record)
        if len(options) < 2:
            raise row_error(record, "a multiple-choice question needs at least two options")
        benchmark, ids = ("medqa" if "answer_idx" in data else None), ("id", "qid")
        answer = base.field_value(record, "answer_idx", "answer", "label")
        letter = as_letter(answer, options, record)
        category = str(data.get("meta_info") or data.get("category") or data.get("subject") or "all")
    item = base.EvalItem(base.item_id(record, *ids), str(record.source), record.row,
                         format_question(question, options), letter, category, options)
    return item, benchmark


def _cop_base(records: Sequence[Record]) -> int:
    """MedMCQA's ``cop`` is 1-based in the original JSON and 0-based in the Hub copy."""
    values = {str(r.data.get("cop", "")).strip() for r in records if "cop" in r.data}
    return 0 if "0" in values else 1


class MultipleChoiceTask(base.Task):
    """Accuracy on single-answer multiple-choice questions."""

    name = "mcq"
    description = "multiple-choice QA (MedQA, MedMCQA, MMLU medical, AfriMed-QA): accuracy"
    think = True

    def load(self, records: Sequence[Record], options: base.TaskOptions) -> base.LoadedData:
        cop_base = _cop_base(records)
        items: list[base.EvalItem] = []
        found: list[str | None] = []
        skipped = 0
        for record in records:
            item, benchmark = _parse(record, cop_base)
            found.append(benchmark)
            if item is None:
                skipped += 1
            else:
                items.append(item)
        notes = {"medmcqa_cop_base": str(cop_base)} if "medmcqa" in found else {}
        return base.LoadedData(items, base.most_common(found),
                               {"not a multiple-choice row": skipped} if skipped else {}, notes)

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        return base.scored_label(extract_choice(reply, item.options), item.reference)


TASK = MultipleChoiceTask()
