"""Anatomy localization: MedGemma's ``box_2d`` answers -> boxes in original-image pixels, drawn.

MedGemma 1.5 localizes on an image padded to a square (centred, black bars) and answers a
```json list of {"box_2d": [y0, x0, y1, x1], "label": ...}`` with coordinates normalised to
0..1000 of that square. ``parse_boxes`` undoes both the normalisation and the padding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

#: The model's coordinate scale.
BOX_SCALE = 1000.0

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Box:
    """A labelled box in original-image pixels: (x0, y0) top-left, (x1, y1) bottom-right."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1), the order PIL draws with."""
        return (self.x0, self.y0, self.x1, self.y1)


def square_padding(width: int, height: int) -> tuple[int, int, int]:
    """(side, left, top) of the centred pad-to-square: the extra goes half before, half after."""
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def _items(text: str) -> list[Any]:
    """The JSON values in ```json fences, else the bare list from the first [ to the last ]."""
    start, end = text.find("["), text.rfind("]")
    candidates = _FENCED.findall(text) or ([text[start : end + 1]] if 0 <= start < end else [])
    found: list[Any] = []
    for candidate in candidates:
        try:
            data = json.loads(candidate.strip())
        except json.JSONDecodeError:
            # Models sometimes leave a trailing comma before the closing bracket.
            try:
                data = json.loads(re.sub(r",\s*([\]}])", r"\1", candidate.strip()))
            except json.JSONDecodeError:
                continue
        found.extend(data if isinstance(data, list) else [data])
    return found


def parse_boxes(text: str, image_size: tuple[int, int], *, padded: bool = True) -> list[Box]:
    """Find ``box_2d`` entries in a model answer and map them to original-image pixels.

    Entries that are not 4 numbers are skipped; coordinates are clipped to the image, and each
    box's corners are put in order.

    Args:
        text: the model's answer (a ```json fenced list, or a bare JSON list).
        image_size: (width, height) of the original image.
        padded: the image was padded to a centred square before it went to the model (MedGemma's
            localization preprocessing); False maps each axis to its own side.

    Returns:
        Boxes in pixel coordinates, in answer order; [] when none were found.
    """
    width, height = image_size
    if padded:
        side, left, top = square_padding(width, height)
        scale_x = scale_y = side / BOX_SCALE
    else:
        left = top = 0
        scale_x, scale_y = width / BOX_SCALE, height / BOX_SCALE
    boxes: list[Box] = []
    for item in _items(text):
        coords = item.get("box_2d") if isinstance(item, dict) else None
        if not isinstance(coords, list) or len(coords) != 4:
            continue
        try:
            y0, x0, y1, x1 = (float(v) for v in coords)
        except (TypeError, ValueError):
            continue
        xs = sorted(min(max(x * scale_x - left, 0.0), float(width)) for x in (x0, x1))
        ys = sorted(min(max(y * scale_y - top, 0.0), float(height)) for y in (y0, y1))
        boxes.append(Box(str(item.get("label", "")), xs[0], ys[0], xs[1], ys[1]))
    return boxes


def draw_boxes(image: Image.Image, boxes: list[Box], path: str | Path, width: int | None = None) -> Path:
    """Draw ``parse_boxes``'s boxes on a copy of ``image`` (any mode) and save it as a PNG at
    ``path`` (returned); ``width`` is the line width, default about 0.3% of the larger side."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line = width or max(2, round(max(canvas.size) * 0.003))
    colours = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 200, 0), (220, 64, 220), (0, 220, 220)]
    for index, box in enumerate(boxes):
        colour = colours[index % len(colours)]
        draw.rectangle(box.as_tuple(), outline=colour, width=line)
        if box.label:
            draw.text((box.x0 + line, box.y0 + line), box.label, fill=colour)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target, "PNG")
    return target
