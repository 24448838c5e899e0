"""Report generation: the model writes a report for an image; ROUGE-L and BLEU against the reference.

The model cards report RadGraph F1, which needs a clinical NER model; medgem computes ROUGE-L
(rouge-score) and BLEU (sacrebleu), so its numbers are not comparable with the card's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medgem.evaluate.datasets import Record
from medgem.evaluate.extract import answer_part
from medgem.evaluate.metrics import Interval, bootstrap_interval, corpus_bleu, rouge_l
from medgem.evaluate.tasks import base
from medgem.request.compose import RADIOLOGIST_SYSTEM

PROMPT = "Write the findings section of a radiology report for this chest X-ray."


class ReportTask(base.Task):
    """ROUGE-L (mean over reports, bootstrap interval) and corpus BLEU."""

    name = "report"
    description = "report generation vs reference reports: ROUGE-L and BLEU"
    primary_metric = "rouge_l"

    def load(self, records: Sequence[Record], options: base.TaskOptions) -> base.LoadedData:
        items = []
        for record in records:
            reference = str(base.field_value(record, "findings", "report", "reference", "impression"))
            prompt = base.field_value(record, "prompt", "instruction", required=False)
            image = base.field_value(record, "path", "image", "image_path", "dicom_path", required=False)
            root = Path(options.image_root or record.source.parent)
            images = (base.image_ref(image, record, root),) if image is not None else ()
            items.append(base.EvalItem(
                base.item_id(record, "id", "study_id"), str(record.source), record.row,
                str(prompt or PROMPT), reference, str(record.data.get("view") or "all"),
                images=images, system=RADIOLOGIST_SYSTEM,
            ))
        return base.LoadedData(items, None)

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        text = answer_part(reply)
        value = rouge_l(text, str(item.reference)) if text else 0.0
        return base.Scored(text, bool(text), False, value)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        replies = [str(s.prediction or "") for s in scored]
        references = [str(i.reference) for i in items]
        pairs = list(zip(replies, references, strict=True))
        bleu = corpus_bleu(replies, references)
        low, high = bootstrap_interval(
            pairs, lambda xs: corpus_bleu([p for p, _ in xs], [r for _, r in xs]), samples=200
        )
        return {
            "rouge_l": base.mean_with_bootstrap([s.score for s in scored]),
            "bleu": Interval(bleu, low, high),
        }


TASK = ReportTask()
