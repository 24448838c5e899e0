"""PubMedQA: a question and its abstract's contexts, answered yes, no or maybe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import extract_label
from medgem.evaluate.tasks import base

LABELS = ("yes", "no", "maybe")
INSTRUCTION = "Answer with yes, no or maybe."


def _contexts(value: Any) -> str:
    """CONTEXTS as a list (original JSON) or {"contexts": [...]} (the Hub copy)."""
    if isinstance(value, dict):
        value = value.get("contexts", [])
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value)
    return str(value)


class PubMedQATask(base.Task):
    """Yes/no/maybe accuracy; reported per true label."""

    name = "pubmedqa"
    description = "PubMedQA: yes/no/maybe accuracy"

    benchmark = "pubmedqa"

    def item(self, record: Record, root: Path) -> base.EvalItem:
        question = str(base.field_value(record, "question"))
        decision = base.field_value(record, "final_decision", "answer", "label")
        decision = str(decision).strip().lower()
        if decision not in LABELS:
            raise row_error(record, f"final_decision {decision!r} is not yes, no or maybe")
        context = base.field_value(record, "contexts", "context", required=False)
        text = f"Context:\n{_contexts(context)}\n\nQuestion: {question}" if context else question
        return base.EvalItem(
            base.item_id(record, "id", "pubid", "pmid"), str(record.source), record.row,
            f"{text}\n\n{INSTRUCTION}", decision, decision,
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        return base.scored_label(extract_label(reply, LABELS), item.reference)


TASK = PubMedQATask()
