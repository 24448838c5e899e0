"""Longitudinal chest X-ray: how did a finding change from the prior to the current image?
(MS-CXR-T temporal classification; MedGemma 1.5 card: macro accuracy 65.7).

One row: a ``prior`` and a ``current`` image, the ``finding`` (pleural effusion, pneumonia,
pneumothorax, edema, consolidation...) and its change ``label``: improving, stable or worsening.
Both images go to the model, prior first, then the question. Macro accuracy is the mean over
the three change classes of each class's accuracy (balanced accuracy), so a model that always
answers "stable" scores 33%, not the share of stable studies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, normalize_text
from medgem.evaluate.metrics import Interval, macro_accuracy
from medgem.evaluate.tasks import base
from medgem.request.compose import RADIOLOGIST_SYSTEM

CLASSES = ("improving", "stable", "worsening")
#: Words a reply or a dataset may use for each class.
SYNONYMS: dict[str, str] = {
    "improving": "improving", "improved": "improving", "improvement": "improving",
    "better": "improving", "resolving": "improving", "resolved": "improving",
    "stable": "stable", "unchanged": "stable", "no change": "stable", "same": "stable",
    "worsening": "worsening", "worsened": "worsening", "worse": "worsening",
    "progressing": "worsening", "progression": "worsening", "increased": "worsening",
}
_WORDS = re.compile(r"\b(" + "|".join(sorted(SYNONYMS, key=len, reverse=True)) + r")\b")


def question(finding: str) -> str:
    """The question after the two images (prior first)."""
    return (f"The first image is the prior chest X-ray and the second is the current one. "
            f"Compared with the prior, is the {finding} improving, stable or worsening? "
            "Answer with one word: improving, stable or worsening.")


def read_change(reply: str) -> str | None:
    """The change class a reply names; with several, the first named (the answer leads)."""
    found = _WORDS.findall(normalize_text(answer_part(reply)))
    return SYNONYMS[found[0]] if found else None


class LongitudinalTask(base.Task):
    """Macro (balanced) accuracy over improving/stable/worsening; accuracy per finding."""

    name = "longitudinal"
    description = ("prior + current chest X-ray vs change labels: macro accuracy "
                   "(--benchmark ms-cxr-t for the card)")
    primary_metric = "macro_accuracy"

    def item(self, record: Record, root: Path) -> base.EvalItem:
        prior = base.image_ref(base.field_value(record, "prior", "prior_image", "previous"),
                               record, root)
        current = base.image_ref(base.field_value(record, "current", "current_image", "image"),
                                 record, root)
        finding = str(base.field_value(record, "finding", "condition", "pathology"))
        raw = str(base.field_value(record, "label", "change", "progression"))
        label = SYNONYMS.get(normalize_text(raw))
        if label is None:
            raise row_error(record, f"change label {raw!r} is not one of {', '.join(CLASSES)}")
        return base.EvalItem(
            base.item_id(record, "id", "study_id"), str(record.source), record.row,
            question(finding), label, finding.strip().lower(), images=(prior, current),
            system=RADIOLOGIST_SYSTEM,
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        return base.scored_label(read_change(reply), item.reference)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        pairs = list(zip(items, scored, strict=True))

        def statistic(sample: Sequence[tuple[base.EvalItem, base.Scored]]) -> float:
            return macro_accuracy([str(i.reference) for i, _ in sample], [s.correct for _, s in sample])

        result = {"macro_accuracy": base.bootstrapped(pairs, statistic, samples=500),
                  "accuracy": base.proportion([s.correct for s in scored])}
        for change in CLASSES:
            picked = [s.correct for i, s in pairs if i.reference == change]
            if picked:
                result[f"accuracy_{change}"] = base.proportion(picked)
        return result


TASK = LongitudinalTask()
