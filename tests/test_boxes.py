"""Anatomy localization boxes: parsing, pad-to-square undo, drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medgem.answer.boxes import Box, draw_boxes, parse_boxes, square_padding

ANSWER = """Here are the structures:
```json
[
  {"box_2d": [300, 250, 600, 750], "label": "right lung"},
  {"box_2d": [0, 0, 1000, 1000], "label": "everything"},
  {"box_2d": [1, 2, 3], "label": "broken"},
]
```"""


def test_padded_wide_image_maps_back_to_original_pixels() -> None:
    # 2000x1000 padded to a 2000 square: 500 px black above and below; 1000 units = 2000 px.
    boxes = parse_boxes(ANSWER, (2000, 1000))
    assert boxes[0] == Box("right lung", 500.0, 100.0, 1500.0, 700.0)
    assert boxes[1] == Box("everything", 0.0, 0.0, 2000.0, 1000.0)  # clipped to the image
    assert len(boxes) == 2  # the malformed entry is skipped (and the trailing comma tolerated)


def test_padded_tall_image_and_unpadded_mode() -> None:
    text = '[{"box_2d": [100, 400, 200, 600], "label": "x"}]'
    # 500x1000 -> 1000 square, 250 px bars left and right.
    assert parse_boxes(text, (500, 1000)) == [Box("x", 150.0, 100.0, 350.0, 200.0)]
    assert parse_boxes(text, (500, 1000), padded=False) == [Box("x", 200.0, 100.0, 300.0, 200.0)]


def test_reversed_corners_are_ordered_and_no_json_gives_nothing() -> None:
    assert parse_boxes('[{"box_2d": [500, 500, 0, 0]}]', (100, 100)) == [Box("", 0.0, 0.0, 50.0, 50.0)]
    assert parse_boxes("No localization possible.", (100, 100)) == []


def test_square_padding_is_centred() -> None:
    assert square_padding(2000, 1000) == (2000, 0, 500)


def test_draw_boxes_writes_png_with_the_outline(tmp_path: Path) -> None:
    image = Image.new("L", (200, 100), 0)
    out = draw_boxes(image, [Box("heart", 20, 10, 120, 60)], tmp_path / "b" / "boxes.png", width=2)
    with Image.open(out) as drawn:
        pixels = np.asarray(drawn)
    assert drawn.size == (200, 100)
    assert tuple(pixels[10, 70]) == (255, 64, 64)  # top edge in the first colour
    assert tuple(pixels[35, 70]) == (0, 0, 0)  # inside untouched
