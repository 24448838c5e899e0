"""Anatomy localization: a box for a named structure, scored by IoU against the reference box
(Chest ImaGenome; MedGemma 1.5 card: IoU 38.0).

One row: an ``image``, the ``label`` to find ("right lung", "cardiac silhouette") and the
reference ``box``: [y0, x0, y1, x1] normalised to 0-1000 of the image padded to a square, the
scale MedGemma answers in. The reply is read with :func:`medgem.answer.boxes.parse_boxes` on
that same 0-1000 square, so the two boxes are compared without ever knowing the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medgem.answer.boxes import BOX_SCALE, parse_boxes
from medgem.evaluate.datasets import Record, row_error
from medgem.evaluate.extract import answer_part, normalize_text
from medgem.evaluate.metrics import Interval, box_iou
from medgem.evaluate.tasks import base
from medgem.structured.builtin import BOXES


def question(label: str) -> str:
    """The localization prompt: the structure, and the answer format MedGemma 1.5 was taught."""
    return (f"Locate the {label} in this image. Answer with a ```json list of "
            f'{{"box_2d": [y0, x0, y1, x1], "label": "{label}"}} with coordinates normalised '
            "to 0-1000.")


def _reference_box(value: Any, record: Record) -> list[float]:
    if isinstance(value, dict):
        value = value.get("box_2d")
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(0 <= v <= BOX_SCALE for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise row_error(record, f"box {value!r} is not [y0, x0, y1, x1] within 0-1000",
                        "give the reference box normalised to 0-1000, top-left corner first")
    return box


def predicted_box(reply: str, label: str) -> list[float] | None:
    """The reply's box for ``label`` as [y0, x0, y1, x1] on the 0-1000 square: the first box
    whose label matches, else the first box; None when the reply holds none."""
    side = int(BOX_SCALE)
    boxes = parse_boxes(answer_part(reply), (side, side), padded=False)
    if not boxes:
        return None
    wanted = normalize_text(label)
    box = next((b for b in boxes if normalize_text(b.label) == wanted), boxes[0])
    return [box.y0, box.x0, box.y1, box.x1]


class BoxesTask(base.Task):
    """Mean IoU (bootstrap interval) and the share of boxes with IoU above 0.5."""

    name = "boxes"
    description = ("image + label + reference box: mean IoU, IoU>0.5 rate "
                   "(--benchmark chest-imagenome for the card)")
    primary_metric = "iou"
    right_or_wrong = False
    schema = BOXES

    def item(self, record: Record, root: Path) -> base.EvalItem:
        image = base.image_ref(base.field_value(record, "image", "path", "image_path"),
                               record, root)
        label = str(base.field_value(record, "label", "anatomy", "structure")).strip()
        box = _reference_box(base.field_value(record, "box", "box_2d", "bbox"), record)
        return base.EvalItem(
            base.item_id(record, "id"), str(record.source), record.row, question(label),
            {"label": label, "box_2d": box}, label.lower(), images=(image,),
        )

    def score(self, item: base.EvalItem, reply: str) -> base.Scored:
        box = predicted_box(reply, item.reference["label"])
        if box is None:
            return base.Scored(None, False, False, 0.0)
        iou = box_iou(box, item.reference["box_2d"])
        return base.Scored(box, True, iou > 0.5, iou)

    def metrics(self, items: Sequence[base.EvalItem], scored: Sequence[base.Scored]) -> dict[str, Interval]:
        return {"iou": base.mean_with_bootstrap([s.score for s in scored]),
                "iou_above_50": base.proportion([s.correct for s in scored])}


TASK = BoxesTask()
