"""Report generation: the model writes a report for an image; ROUGE-L and BLEU against the reference.

The model cards report RadGraph F1, which needs RadGraph's clinical NER model: computed through
the optional `radgraph` package when it and its model files are present (otherwise the report
says what to install); ROUGE-L (rouge-score) and BLEU (sacrebleu) always.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medgem.evaluate.datasets import Record
from medgem.evaluate.extract import answer_part
from medgem.evaluate.metrics import Interval, corpus_bleu, rouge_l
from medgem.evaluate.radgraph_f1 import radgraph_scores, unavailable
from medgem.evaluate.tasks import base
from medgem.request.compose import RADIOLOGIST_SYSTEM

PROMPT = "Write the findings section of a radiology report for this chest X-ray."


class ReportTask(base.Task):
    """ROUGE-L (mean over reports, bootstrap interval), corpus BLEU, and RadGraph F1 (mean over
    reports) when the radgraph package can run."""

    name = "report"
    description = "report generation vs reference reports: ROUGE-L, BLEU, RadGraph F1 (radgraph package)"
    primary_metric = "rouge_l"
    right_or_wrong = False

    def item(self, record: Record, root: Path) -> base.EvalItem:
        reference = str(base.field_value(record, "findings", "report", "reference", "impression"))
        prompt = base.field_value(record, "prompt", "instruction", required=False)
        image = base.field_value(record, "path", "image", "image_path", "dicom_path",
                                 required=False)
        images = (base.image_ref(image, record, root),) if image is not None else ()
        return base.EvalItem(
            base.item_id(record, "id", "study_id"), str(record.source), record.row,
            str(prompt or PROMPT), reference, str(record.data.get("view") or "all"),
            images=images, system=RADIOLOGIST_SYSTEM,
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        text = answer_part(reply)
        value = rouge_l(text, str(item.reference)) if text else 0.0
        return base.Scored(text, bool(text), False, value)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        replies = [str(s.prediction or "") for s in scored]
        references = [str(i.reference) for i in items]
        pairs = list(zip(replies, references, strict=True))
        result = {
            "rouge_l": base.mean_with_bootstrap([s.score for s in scored]),
            "bleu": base.bootstrapped(
                pairs, lambda xs: corpus_bleu([p for p, _ in xs], [r for _, r in xs]), samples=200
            ),
        }
        radgraph = radgraph_scores(replies, references)
        if radgraph is not None:
            result["radgraph_f1"] = base.mean_with_bootstrap(radgraph)
        return result

    def notes(self) -> list[str]:
        return [why] if (why := unavailable()) else []


TASK = ReportTask()
