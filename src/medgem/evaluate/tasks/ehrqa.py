"""EHR question answering: a patient record and a question about it (MedGemma 1.5 card: EHRQA
accuracy 89.6).

One row: the record as ``record`` text, or as a FHIR ``bundle`` (the JSON object, or a path to a
.json file beside the data), rendered to text by :mod:`medgem.evaluate.fhir_text`; a
``question``; the ``answer``; and optional ``options`` (multiple choice, scored by letter as MCQ
is). Without options a yes/no answer is read as a label and any other answer must match after
normalisation (case, punctuation, articles).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, extract_choice, extract_label, normalize_text
from medgem.evaluate.fhir_text import render_bundle
from medgem.evaluate.tasks import base
from medgem.evaluate.tasks.mcq import as_letter, format_question, options_from
from medgem.request.compose import ASSISTANT_SYSTEM

YES_NO = ("yes", "no")


def _bundle(value: Any, record: Record, root: Path) -> Any:
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else root / value
        try:
            value = json.loads(path.read_text(encoding="utf-8") if path.is_file() else value)
        except json.JSONDecodeError as exc:
            raise row_error(record, f"the FHIR bundle is not valid JSON ({exc.msg})") from exc
    try:
        return render_bundle(value)
    except Exception as exc:
        raise row_error(record, str(exc), 'give a FHIR Bundle ("resourceType": "Bundle")') from exc


class EhrQATask(base.Task):
    """Accuracy with its Wilson interval (the base task's metric)."""

    name = "ehrqa"
    description = "patient record (text or FHIR bundle) + question: accuracy (--benchmark ehrqa for the card)"

    def item(self, record: Record, root: Path) -> base.EvalItem:
        text = base.field_value(record, "record", "ehr", "note", required=False)
        if text is None:
            text = _bundle(base.field_value(record, "bundle", "fhir", "record"), record, root)
        question = str(base.field_value(record, "question"))
        answer: Any = base.field_value(record, "answer", "label")
        choices = base.field_value(record, "options", "choices", required=False)
        mcq = options_from(choices, record) if choices is not None else {}
        if mcq:
            question, answer = format_question(question, mcq), as_letter(answer, mcq, record)
        return base.EvalItem(
            base.item_id(record, "id", "qid"), str(record.source), record.row,
            f"Patient record:\n{str(text).strip()}\n\nQuestion: {question}", str(answer),
            str(base.field_value(record, "category", "type", required=False) or "all"),
            options=mcq, system=ASSISTANT_SYSTEM,
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        text = answer_part(reply)
        reference = str(item.reference)
        if item.options:
            prediction = extract_choice(text, item.options)
        elif normalize_text(reference) in YES_NO:
            prediction = extract_label(text, YES_NO)
        else:
            prediction = text.removeprefix("Answer:").strip() or None
        correct = prediction is not None and normalize_text(prediction) == normalize_text(reference)
        return base.Scored(prediction, prediction is not None, correct, float(correct))


TASK = EhrQATask()
