"""The picture a pathologist checks: the low-resolution level with tissue and patches drawn on."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from medgem.inputs.tissue import Cell

#: Longest side of the overview image.
OVERVIEW_SIDE = 1024


def draw_overview(
    level: Image.Image, mask: NDArray[np.bool_], downsample: float, cell0: float,
    cells: list[Cell], chosen: list[Cell],
) -> Image.Image:
    """Tint tissue green, outline every tissue cell thinly and every chosen patch boldly.

    Args:
        level: the RGB level the mask was computed on (pyramid pixels only, never the macro).
        mask: its tissue mask.
        downsample: level-0 px per ``level`` px.
        cell0: patch cell side in level-0 px.
        cells, chosen: tissue cells and the sampled patches (level-0 corners).

    Returns:
        A new RGB image, longest side at most OVERVIEW_SIDE.
    """
    pixels = np.asarray(level.convert("RGB")).astype(np.float32)
    tint = np.array([0, 200, 0], dtype=np.float32)
    pixels[mask] = pixels[mask] * 0.6 + tint * 0.4
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    side = cell0 / downsample
    for cell in cells:
        x, y = cell.x / downsample, cell.y / downsample
        draw.rectangle((x, y, x + side, y + side), outline=(0, 120, 255), width=1)
    for number, cell in enumerate(chosen, start=1):
        x, y = cell.x / downsample, cell.y / downsample
        draw.rectangle((x, y, x + side, y + side), outline=(255, 0, 0), width=2)
        if side >= 24:
            draw.text((x + 3, y + 2), str(number), fill=(255, 0, 0))
    scale = OVERVIEW_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return image
