"""Whole-slide pathology reports: the model describes a slide's tissue patches; ROUGE-L against
the reference report (MedGemma 1.5 card: WSI-Path report ROUGE 49.4).

One row: a ``slide`` (SVS, NDPI, MRXS, pyramidal/OME TIFF, a DICOM-WSI folder or zip) and its
reference ``report``; an optional ``prompt`` gives the tissue and procedure the way the
notebooks do ("colon, biopsy:"). The slide becomes tissue patches at 10x with the pathology
instruction before them (the readers' defaults: up to 125 patches, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medgem.evaluate.datasets import Record
from medgem.evaluate.extract import answer_part
from medgem.evaluate.metrics import Interval, rouge_l
from medgem.evaluate.tasks import base

PROMPT = "Describe the findings in this slide as a pathology report."


class WsiReportTask(base.Task):
    """ROUGE-L per report (mean, bootstrap interval)."""

    name = "wsi-report"
    description = ("whole-slide image vs reference pathology report: ROUGE-L "
                   "(--benchmark wsi-path for the card)")
    primary_metric = "rouge_l"
    right_or_wrong = False

    def item(self, record: Record, root: Path) -> base.EvalItem:
        slide = base.image_ref(base.field_value(record, "slide", "wsi", "image", "path"),
                               record, root)
        reference = str(base.field_value(record, "report", "reference", "diagnosis", "text"))
        prompt = base.field_value(record, "prompt", "instruction", required=False)
        tissue = base.field_value(record, "tissue", "organ", required=False)
        return base.EvalItem(
            base.item_id(record, "id", "slide_id"), str(record.source), record.row,
            str(prompt or PROMPT), reference, str(tissue or "all").lower(), images=(slide,),
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        text = answer_part(reply)
        return base.Scored(text, bool(text), False, rouge_l(text, str(item.reference)) if text else 0.0)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        return {"rouge_l": base.mean_with_bootstrap([s.score for s in scored])}


TASK = WsiReportTask()
