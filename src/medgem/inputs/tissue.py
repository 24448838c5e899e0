"""Tissue on glass: an HSV mask on a low-resolution level and the patch grid laid over it.

Pure numpy/Pillow functions, no slide I/O: ``wsi.py`` reads the pixels and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

#: Saturation (0-255) below which a pixel is never tissue, whatever Otsu says: glass is grey.
MIN_SATURATION = 20
#: Saturation above which a pixel is always tissue: on a slide covered edge to edge, Otsu would
#: otherwise split the stain into two classes and throw half the tissue away.
MAX_SATURATION_CUT = 60
#: Value (brightness, 0-255) below which a pixel is pen, dust or out-of-focus black, not tissue.
MIN_VALUE = 30
#: Share of a grid cell that must be tissue for the cell to become a patch.
MIN_CELL_TISSUE = 0.25


def otsu_threshold(values: NDArray[np.uint8]) -> int:
    """Otsu's threshold of 8-bit values: the cut that maximises the between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(hist)
    mean_low = np.cumsum(hist * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_low[-1] * weight_low - mean_low * total) ** 2 / (weight_low * weight_high)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between))


def tissue_mask(rgb: Image.Image) -> NDArray[np.bool_]:
    """Tissue pixels of a low-resolution RGB view of the slide.

    Stages: HSV conversion; saturation above Otsu's cut, clamped to MIN_SATURATION..
    MAX_SATURATION_CUT (stained tissue is coloured, glass and background are grey or white); value above MIN_VALUE (drops black pen and
    dust); a 3x3 closing then opening to fill holes and drop specks.

    Returns:
        (H, W) bool array, True on tissue.
    """
    hsv = np.asarray(rgb.convert("RGB").convert("HSV"))
    saturation, value = hsv[..., 1], hsv[..., 2]
    cut = min(max(otsu_threshold(saturation), MIN_SATURATION), MAX_SATURATION_CUT)
    raw = (saturation > cut) & (value > MIN_VALUE)
    image = Image.fromarray(raw.astype(np.uint8) * 255)
    closed = image.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))
    opened = closed.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    return np.asarray(opened) > 127


@dataclass(frozen=True)
class Cell:
    """One grid cell in level-0 pixels: its top-left corner and its tissue share."""

    x: int
    y: int
    tissue: float


def tissue_cells(mask: NDArray[np.bool_], mask_downsample: float, cell: float, width: int,
                 height: int) -> list[Cell]:
    """Non-overlapping cells of side ``cell`` (level-0 px) over the slide that hold tissue.

    Args:
        mask: the tissue mask of a level with ``mask_downsample`` level-0 px per mask px.
        cell: cell side in level-0 pixels (stride = side: no overlap).
        width, height: level-0 size; only whole cells are used.

    Returns:
        Cells at least ``MIN_CELL_TISSUE`` of tissue, in reading order (row by row, left to right).
    """
    cells: list[Cell] = []
    rows, cols = int(height // cell), int(width // cell)
    for row in range(rows):
        for col in range(cols):
            x0, y0 = col * cell, row * cell
            top, left = int(y0 / mask_downsample), int(x0 / mask_downsample)
            bottom = max(top + 1, int((y0 + cell) / mask_downsample))
            right = max(left + 1, int((x0 + cell) / mask_downsample))
            window = mask[top:bottom, left:right]
            share = float(window.mean()) if window.size else 0.0
            if share >= MIN_CELL_TISSUE:
                cells.append(Cell(round(x0), round(y0), share))
    return cells


def sample_cells(cells: list[Cell], limit: int, seed: int) -> list[Cell]:
    """At most ``limit`` cells drawn without replacement by ``seed``, kept in reading order."""
    if len(cells) <= limit:
        return list(cells)
    chosen = np.random.default_rng(seed).choice(len(cells), size=limit, replace=False)
    return [cells[i] for i in sorted(int(i) for i in chosen)]
