"""Lab report -> JSON: every lab value of a PDF or an image, field by field (MedGemma 1.5 card:
macro / micro F1 91 / 88 on PDFs, 85 / 83 on PNGs).

One row: a ``document`` (a PDF, whose pages reach the model as images, or a picture) and the
``expected`` values: a list of {"name", "value", "unit", ...} objects (or an object holding such
a list, or name -> value). Each value becomes facts (name, field, normalised content) for every
field the reference gives (name included: finding the test at all counts); the reply's first JSON
value is read the same way. Micro F1 pools the facts of all documents; macro F1 is the mean of
each document's F1. Numbers compare as numbers ("13.20" = "13.2"), units after normalisation
("mmol/L" = "mmol/l", "µg" = "ug", "10^9/L" = "x10*9/l").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import first_json_value, normalize_text
from medgem.evaluate.metrics import Interval, f1_counts, match_counts
from medgem.evaluate.tasks import base
from medgem.structured.builtin import LAB_VALUES

PROMPT = ("Extract every lab value in this report as a ```json list of objects with the keys "
          '"name", "value", "unit", "reference_range", "flag", "specimen" and "collection_time" '
          "(leave out keys the report does not give).")
#: Other names models and datasets use for the same field.
FIELD_ALIASES: dict[str, str] = {
    "test": "name", "test_name": "name", "analyte": "name", "lab": "name", "parameter": "name",
    "result": "value", "result_value": "value", "units": "unit", "range": "reference_range",
    "ref_range": "reference_range", "normal_range": "reference_range", "reference": "reference_range",
    "abnormal_flag": "flag", "interpretation": "flag", "sample": "specimen",
    "collected": "collection_time", "collection_date": "collection_time", "date": "collection_time",
}
_LIST_KEYS = ("lab_values", "labs", "results", "values", "tests", "observations")
_NUMBER = re.compile(r"^[<>]?=?\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_UNIT_SPELLINGS = (("µ", "u"), ("μ", "u"), ("mcg", "ug"), ("×", "x"), ("*", "^"), ("litre", "l"),
                   ("liter", "l"), ("iu/", "u/"))


def normalize_number(text: str) -> str | None:
    """A number written any way ("13.20", "1,234", "<0.5") as one canonical string; None when
    ``text`` is not a number."""
    compact = text.strip()
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", compact):  # thousands separators
        compact = compact.replace(",", "")
    elif re.fullmatch(r"\d+,\d+", compact):  # a decimal comma
        compact = compact.replace(",", ".")
    if not _NUMBER.match(compact):
        return None
    sign = re.match(r"^[<>]?=?", compact)
    prefix = sign.group(0) if sign else ""
    value = float(compact[len(prefix):].strip())
    return prefix + (str(int(value)) if value.is_integer() else repr(value))


def normalize_unit(text: str) -> str:
    """A unit in one spelling: lower case, no spaces, µ as u, "10^9/L" and "x10*9/l" alike."""
    unit = text.strip().lower().replace(" ", "")
    for old, new in _UNIT_SPELLINGS:
        unit = unit.replace(old, new)
    return unit.removeprefix("x")


def _content(field: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if field == "unit":
        return normalize_unit(text)
    number = normalize_number(text)
    return number if number is not None else normalize_text(text)


def lab_values(data: Any) -> list[dict[str, Any]]:
    """The lab values in a parsed JSON answer or reference, each a dict with canonical keys."""
    if isinstance(data, dict):
        listed = next((data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)), None)
        if listed is not None:
            data = listed
        elif "name" not in data and not any(FIELD_ALIASES.get(k) == "name" for k in data):
            # {"Haemoglobin": 13.2} or {"Haemoglobin": {"value": 13.2, "unit": "g/dL"}}
            data = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in data.items()]
        else:
            data = [data]
    if not isinstance(data, list):
        return []
    values = []
    for entry in data:
        if isinstance(entry, dict):
            values.append({FIELD_ALIASES.get(str(k).lower(), str(k).lower()): v for k, v in entry.items()})
    return values


def facts(values: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(test name, field, normalised content) for each field of each value; ``fields`` limits
    the facts to those fields (the reference's, so extra keys in a reply cost nothing)."""
    found = []
    for value in values:
        name = _content("name", value.get("name"))
        if not name:
            continue
        for field, content in value.items():
            if content is None or (fields is not None and field not in fields):
                continue
            found.append((name, field, _content(field, content)))
    return found


class LabExtractionTask(base.Task):
    """Field-level macro F1 (mean over documents) and micro F1 (pooled facts)."""

    name = "lab-extraction"
    description = ("lab report PDF or image -> JSON vs expected values: field-level macro/micro F1 "
                   "(--benchmark lab-report-pdf or lab-report-png for the card)")
    primary_metric = "macro_f1"
    schema = LAB_VALUES
    right_or_wrong = False

    def item(self, record: Record, root: Path) -> base.EvalItem:
        document = base.image_ref(base.field_value(record, "document", "pdf", "image", "path"),
                                  record, root)
        expected = lab_values(base.field_value(record, "expected", "labels", "lab_values"))
        if not facts(expected):
            raise row_error(record, "expected holds no lab value with a name",
                            'give a list like [{"name": "Sodium", "value": 140, "unit": "mmol/L"}]')
        kind = "pdf" if isinstance(document, str) and document.lower().endswith(".pdf") else "image"
        return base.EvalItem(
            base.item_id(record, "id"), str(record.source), record.row,
            str(base.field_value(record, "prompt", required=False) or PROMPT), expected, kind,
            images=(document,),
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        parsed = first_json_value(reply)
        if parsed is None:
            return base.Scored(None, False, False, 0.0)
        predicted = lab_values(parsed)
        f1 = f1_counts(*self._counts(item.reference, predicted))
        return base.Scored(predicted, True, f1 == 1.0, f1)

    @staticmethod
    def _counts(expected: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any]]) -> tuple[int, int, int]:
        fields = sorted({field for value in expected for field in value})
        return match_counts(facts(predicted, fields), facts(expected))

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        pairs = list(zip(items, scored, strict=True))

        def micro(sample: Sequence[tuple[base.EvalItem, base.Scored]]) -> float:
            tp = fp = fn = 0
            for item, s in sample:
                t, p, n = self._counts(item.reference, s.prediction or [])
                tp, fp, fn = tp + t, fp + p, fn + n
            return f1_counts(tp, fp, fn)

        return {"macro_f1": base.mean_with_bootstrap([s.score for s in scored]),
                "micro_f1": base.bootstrapped(pairs, micro, samples=500),
                "exact_documents": base.proportion([s.correct for s in scored])}

    def notes(self) -> list[str]:
        return ["replies read as the first JSON value in the text (decoding constrained to the "
                "lab_values schema when the engine can: see the run's constraint)"]


TASK = LabExtractionTask()
