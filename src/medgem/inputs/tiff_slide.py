"""Pyramidal TIFFs OpenSlide does not see whole (OME-TIFF with SubIFD pyramids) through tifffile.

Regions are assembled from the tiles they overlap, each tile read and decoded on its own, so a
slide is never decoded whole. Resolution comes from the OME-XML pixel size or the TIFF
resolution tags; the OME-XML is otherwise never copied (it may name the patient or the study).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medgem.errors import ImageInputError

#: OME length units -> microns.
_UNIT_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(xml: str | None) -> float | None:
    """Microns per pixel from OME-XML's first ``PhysicalSizeX`` (µm unless a unit says otherwise)."""
    if not xml:
        return None
    size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    factor = _UNIT_MICRONS.get(unit.group(1) if unit else "µm")
    return float(size.group(1)) * factor if factor else None


def tag_mpp(page: Any) -> float | None:
    """Microns per pixel from the TIFF XResolution / ResolutionUnit tags (cm or inch only)."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not numerator or not denominator or unit not in (2, 3):
        return None
    per_unit = numerator / denominator
    return (25_400.0 if unit == 2 else 10_000.0) / per_unit


def open_tifffile_pyramid(path: Path) -> tuple[Any, list[tuple[int, int, float]], float | None,
                                               Callable[[int, int, int, int, int], Image.Image]]:
    """Open a tiled pyramid with tifffile.

    Returns:
        (the open TiffFile, [(width, height, downsample)] per level, level-0 µm/px or None,
        read(level, x0, y0, width, height) with (x0, y0) in level-0 pixels).

    Raises:
        ImageInputError: the TIFF is not tiled RGB.
    """
    import tifffile

    tif = tifffile.TiffFile(str(path))
    series = tif.series[0]
    pages = [level.keyframe for level in series.levels]
    if not all(page.is_tiled and page.samplesperpixel in (3, 4) and int(page.planarconfig) == 1
               for page in pages):
        tif.close()
        raise ImageInputError(f"{path.name} is an OME/pyramidal TIFF that is not tiled RGB",
                              "re-export it as a tiled RGB pyramid (e.g. vips tiffsave --tile --pyramid)")
    base_width = int(pages[0].imagewidth)
    levels = [(int(p.imagewidth), int(p.imagelength), base_width / int(p.imagewidth)) for p in pages]
    mpp = ome_mpp(tif.ome_metadata) if tif.is_ome else None
    mpp = mpp or tag_mpp(pages[0])

    def read(level: int, x0: int, y0: int, width: int, height: int) -> Image.Image:
        page = pages[level]
        scale = levels[level][2]
        left, top = int(x0 / scale), int(y0 / scale)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = -(-int(page.imagewidth) // tw)
        for ty in range(max(0, top // th), min(-(-int(page.imagelength) // th), -(-(top + height) // th))):
            for tx in range(max(0, left // tw), min(across, -(-(left + width) // tw))):
                index = ty * across + tx
                tif.filehandle.seek(page.dataoffsets[index])
                data = tif.filehandle.read(page.databytecounts[index])
                try:
                    tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                except Exception as exc:
                    raise ImageInputError(f"{path.name}: tile {index} at level {level} is corrupt ({exc})",
                                          "copy the file again") from exc
                tile = np.asarray(tile).reshape(th, tw, -1)[..., :3]
                ys, xs = ty * th - top, tx * tw - left  # tile origin in the output
                a0, b0 = max(0, -ys), max(0, -xs)
                a1, b1 = min(th, height - ys), min(tw, width - xs)
                out[ys + a0:ys + a1, xs + b0:xs + b1] = tile[a0:a1, b0:b1]
        return Image.fromarray(out, mode="RGB")

    return tif, levels, mpp, read
