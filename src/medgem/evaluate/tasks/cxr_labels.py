"""Chest X-ray findings read from generated answers, scored against CheXpert-style labels.

Labels: 1 present, 0 absent, -1 uncertain, blank not mentioned (read as absent). The score is
macro F1 over the five findings the model card uses. Uncertain labels follow a policy recorded
with the run: left out of that finding's F1 ("ignore", the default), or read as present/absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgem.errors import DatasetError
from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, extract_findings
from medgem.evaluate.metrics import Interval, macro_f1
from medgem.evaluate.tasks import base
from medgem.request.compose import RADIOLOGIST_SYSTEM

FINDINGS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "atelectatic"),
    "Cardiomegaly": ("cardiomegaly", "enlarged heart", "cardiac enlargement", "heart is enlarged"),
    "Consolidation": ("consolidation",), "Edema": ("edema", "oedema"),
    "Pleural Effusion": ("pleural effusion", "effusion"),
}
QUESTION = (
    "Which of these findings does this chest X-ray show: "
    + ", ".join(FINDINGS) + "? List the findings that are present, or answer 'none'."
)
POLICIES = ("ignore", "positive", "negative")


def _label(value: Any, record: Record, finding: str, policy: str) -> bool | None:
    text = str(value).strip() if value is not None else ""
    if text in ("", "nan", "None"):
        return False
    try:
        number = float(text)
    except ValueError as exc:
        raise row_error(record, f"{finding} is {text!r}, expected 1, 0, -1 or blank") from exc
    if number == 1:
        return True
    if number == 0:
        return False
    if number == -1:
        return None if policy == "ignore" else policy == "positive"
    raise row_error(record, f"{finding} is {text!r}, expected 1, 0, -1 or blank")


class ChestXrayLabelsTask(base.Task):
    """Macro F1 over the five findings (Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion)."""

    name = "cxr-labels"
    description = "chest X-ray findings vs CheXpert/MIMIC-CXR labels: macro F1 over 5 findings"
    primary_metric = "macro_f1"
    right_or_wrong = False

    def load(self, records: Sequence[Record], options: base.TaskOptions) -> base.LoadedData:
        if options.uncertain not in POLICIES:
            raise DatasetError(f"unknown uncertain-label policy '{options.uncertain}'",
                               f"choose one of: {', '.join(POLICIES)}")
        columns = {k.lower() for k in records[0].data}
        missing = [f for f in FINDINGS if f.lower() not in columns]
        if missing:
            raise DatasetError(
                f"{records[0].source}: no column for {', '.join(missing)}",
                "cxr-labels reads CheXpert-style CSVs with one column per finding",
            )
        items = []
        for record in records:
            lowered = {k.lower(): v for k, v in record.data.items()}
            labels = {f: _label(lowered.get(f.lower()), record, f, options.uncertain)
                      for f in FINDINGS}
            root = options.image_root or record.source.parent
            image = base.image_ref(base.field_value(record, "path", "image", "image_path", "dicom_path"),
                                   record, Path(root))
            category = str(lowered.get("frontal/lateral") or lowered.get("view") or "all")
            items.append(base.EvalItem(
                base.item_id(record, "id", "study_id", "path"), str(record.source), record.row,
                QUESTION, labels, category, images=(image,), system=RADIOLOGIST_SYSTEM,
            ))
        benchmark = "mimic-cxr" if {"subject_id", "study_id"} <= columns else "chexpert"
        return base.LoadedData(items, benchmark, notes={"uncertain_labels": options.uncertain})

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        text = answer_part(reply)
        if not text:
            return base.Scored(None, False, False, 0.0)
        predicted = extract_findings(text, FINDINGS)
        labelled = [f for f, v in item.reference.items() if v is not None]
        agree = sum(predicted[f] == item.reference[f] for f in labelled)
        score = agree / len(labelled) if labelled else 1.0
        return base.Scored(predicted, True, agree == len(labelled), score)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        pairs = list(zip(items, scored, strict=True))

        def statistic(sample: Sequence[tuple[base.EvalItem, base.Scored]],
                      findings: Sequence[str] = tuple(FINDINGS)) -> float:
            """Macro F1 over ``findings``; labels left out (None) do not count."""
            truth = [[i.reference[f] for f in findings] for i, _ in sample]
            predicted = [[bool((s.prediction or {}).get(f, False)) for f in findings]
                         for _, s in sample]
            return macro_f1(truth, predicted)

        result = {"macro_f1": base.bootstrapped(pairs, statistic, samples=500)}
        for finding in FINDINGS:
            f1 = statistic(pairs, (finding,))
            result[f"f1_{finding.lower().replace(' ', '_')}"] = Interval(f1, f1, f1)
        return result


TASK = ChestXrayLabelsTask()
