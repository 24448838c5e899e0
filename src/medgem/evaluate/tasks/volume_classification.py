"""CT/MR volume classification: is a condition present in this series? (MedGemma 1.5 card rows
CT dataset 1, 7 conditions; MRI dataset 1, 10 conditions; CT-RATE, 18 conditions).

One row is a series (a DICOM folder or zip, a NIfTI file) with either one ``condition`` and its
``label`` (yes/no, 1/0, true/false), or ``labels``: condition -> label, expanded into one item per
condition (the model is asked about each condition in turn, the series read each time). CT-RATE's
label CSV (``VolumeName`` and one 0/1 column per abnormality) is read as it ships. The
series reaches the model as the volume prompt (instruction, each slice then ``SLICE n``, the
question last). Macro accuracy is the mean over conditions of each condition's accuracy; macro
F1 the mean over conditions of the F1 of "present" (CT-RATE's metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, extract_label
from medgem.evaluate.metrics import Interval, binary_f1, macro_accuracy
from medgem.evaluate.tasks import base

YES_NO = ("yes", "no")
_TRUE = {"1", "1.0", "yes", "true", "present", "positive"}
_FALSE = {"0", "0.0", "no", "false", "absent", "negative"}
_SCAN = {"CT": "CT scan", "MR": "MRI scan", "MRI": "MRI scan"}


def question(condition: str, modality: str | None) -> str:
    """The question asked after the slices."""
    scan = _SCAN.get((modality or "").upper(), "scan")
    return f"Does this {scan} show {condition}? Answer yes or no."


def _present(value: Any, record: Record, condition: str) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise row_error(record, f"label {value!r} for {condition!r} is not yes/no, 1/0 or true/false")


def _key(condition: str) -> str:
    return condition.strip().lower().replace(" ", "_")


class VolumeClassificationTask(base.Task):
    """Macro accuracy over conditions (CT, MRI rows of the card), per-condition and macro F1
    (CT-RATE)."""

    name = "volume-classification"
    description = ("CT/MR series vs condition labels: macro accuracy, per-condition F1 "
                   "(--benchmark ct-dataset-1, mri-dataset-1 or ct-rate for the card)")
    primary_metric = "macro_accuracy"

    def load(self, records: Sequence[Record], options: base.TaskOptions) -> base.LoadedData:
        items = []
        ct_rate = "VolumeName" in records[0].data
        for record in records:
            root = Path(options.image_root or record.source.parent)
            series = base.image_ref(base.field_value(record, "series", "volume", "path", "image",
                                                     "VolumeName"), record, root)
            modality = "CT" if ct_rate else base.field_value(record, "modality", required=False)
            labels = base.field_value(record, "labels", required=False)
            if ct_rate:
                labels = {k: v for k, v in record.data.items() if k != "VolumeName"}
            elif labels is None:
                condition = str(base.field_value(record, "condition", "finding"))
                labels = {condition: base.field_value(record, "label", "present", "answer")}
            if not isinstance(labels, dict) or not labels:
                raise row_error(record, "labels must be an object: condition -> yes/no")
            own = base.item_id(record, "id", "series_id", "VolumeName")
            for condition, value in labels.items():
                present = _present(value, record, str(condition))
                items.append(base.EvalItem(
                    f"{own}:{_key(str(condition))}" if len(labels) > 1 else own, str(record.source),
                    record.row, question(str(condition), str(modality) if modality else None),
                    "yes" if present else "no", str(condition), images=(series,),
                ))
        return base.LoadedData(items, "ct-rate" if ct_rate else None)

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        return base.scored_label(extract_label(answer_part(reply), YES_NO), item.reference)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        pairs = list(zip(items, scored, strict=True))
        conditions = sorted({i.category for i in items})

        def accuracy_of(sample: Sequence[tuple[base.EvalItem, base.Scored]]) -> float:
            return macro_accuracy([i.category for i, _ in sample], [s.correct for _, s in sample])

        def f1_of(sample: Sequence[tuple[base.EvalItem, base.Scored]], condition: str) -> float:
            picked = [(i, s) for i, s in sample if i.category == condition]
            return binary_f1([i.reference == "yes" for i, _ in picked],
                             [s.prediction == "yes" for _, s in picked])

        def macro_f1_of(sample: Sequence[tuple[base.EvalItem, base.Scored]]) -> float:
            present = sorted({i.category for i, _ in sample})
            return sum(f1_of(sample, c) for c in present) / len(present) if present else 0.0

        result = {"macro_accuracy": base.bootstrapped(pairs, accuracy_of, samples=500),
                  "macro_f1": base.bootstrapped(pairs, macro_f1_of, samples=500),
                  "accuracy": base.proportion([s.correct for s in scored])}
        for condition in conditions:
            f1 = f1_of(pairs, condition)
            result[f"f1_{_key(condition)}"] = Interval(f1, f1, f1)
        return result


TASK = VolumeClassificationTask()
