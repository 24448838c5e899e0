"""Whole-slide images -> the patches MedGemma 1.5 reads: tissue mask, 10x grid, seeded sample.

Slides are opened through OpenSlide (.svs, .ndpi, .mrxs, .scn, generic tiled TIFF) or wsidicom
(DICOM WSI folders and zips) and only ever read region by region: the tissue mask comes from a
low-resolution pyramid level read in strips, and each patch is one region at the level nearest
10x. Label and macro (overview) images are never opened, and no free-text vendor property is
copied into the facts, so a name printed on the glass label cannot leave this module.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from medgem.errors import ImageInputError, require
from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.slide_overview import draw_overview
from medgem.inputs.tissue import sample_cells, tissue_cells, tissue_mask

#: The patch side MedGemma's encoder takes.
PATCH_SIDE = 896
#: Objective magnification -> microns per pixel: 10x is about 1 um/px.
MICRONS_AT_1X = 10.0
#: Most pixels the level used for tissue detection may have (4096 x 4096).
MASK_MAX_PIXELS = 4096 * 4096
#: The tissue level is the coarsest one where a patch cell still spans this many pixels.
MASK_MIN_CELL_PX = 16
#: Strip height when reading the mask level.
STRIP_ROWS = 512


@dataclass(frozen=True)
class Level:
    """One pyramid level: size in its own pixels, downsample from level 0, microns per pixel."""

    width: int
    height: int
    downsample: float
    mpp: float | None


@dataclass
class SlideReader:
    """An open slide: PHI-free facts plus a region reader (level-0 origin, level-sized region)."""

    vendor: str
    levels: list[Level]
    read: Callable[[int, int, int, int, int], Image.Image]
    close: Callable[[], None]
    objective_power: float | None = None


def _rgba_to_rgb(region: Image.Image) -> Image.Image:
    """OpenSlide returns premultiplied RGBA with alpha 0 where there is no scan: make that white."""
    if region.mode != "RGBA" or region.getchannel("A").getextrema() == (255, 255):
        return region.convert("RGB")
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, region).convert("RGB")


def _open_openslide(path: Path) -> SlideReader:
    openslide: Any = require("openslide", "pathology", "reading whole-slide images",
                             "openslide-python")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise _unsupported(path) from exc
    except openslide.OpenSlideError as exc:
        raise ImageInputError(f"{path.name} could not be opened as a slide ({exc})",
                              "copy the file again; check it opens in the scanner's viewer") from exc
    props = slide.properties
    mpp = _float(props.get("openslide.mpp-x"))
    objective = _float(props.get("openslide.objective-power"))
    levels = [Level(int(w), int(h), float(d), mpp * float(d) if mpp else None)
              for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples, strict=True)]

    def read(level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        try:
            return _rgba_to_rgb(slide.read_region((x, y), level, (width, height)))
        except openslide.OpenSlideError as exc:
            raise ImageInputError(
                f"{path.name}: a tile near ({x}, {y}) at level {level} is corrupt ({exc})",
                "copy the file again or re-export it from the scanner software") from exc

    return SlideReader(str(props.get("openslide.vendor") or "unknown"), levels, read, slide.close,
                       objective)


def _unsupported(path: Path) -> ImageInputError:
    """Why OpenSlide refused a file: a huge flat TIFF gets its size, others a generic line."""
    try:
        tifffile: Any = require("tifffile", "pathology", "reading TIFF slides")
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            width, height = int(page.imagewidth), int(page.imagelength)
            tiled = bool(page.is_tiled)
    except ImageInputError:
        raise
    except Exception:
        return ImageInputError(f"{path.name} is not a slide format OpenSlide can read",
                               "export it as SVS, NDPI, MRXS, SCN, pyramidal TIFF or DICOM WSI")
    if tiled:
        return ImageInputError(f"{path.name} is a tiled TIFF OpenSlide cannot read (damaged, or an "
                               "unsupported layout)",
                               "copy the file again, or re-export it as a pyramidal TIFF or SVS")
    return ImageInputError(
        f"{path.name} is a {width}x{height} TIFF without a usable pyramid (stored in strips); "
        "medgem will not decode a slide whole",
        "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave in.tif out.tif --tile --pyramid)")


def _float(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _open_wsidicom(path: Path) -> SlideReader:
    wsidicom: Any = require("wsidicom", "pathology", "reading DICOM whole-slide images")
    try:
        wsi = wsidicom.WsiDicom.open(path)
    except Exception as exc:  # wsidicom raises many types for non-WSI or broken files
        raise ImageInputError(f"{path.name} is not a readable DICOM whole-slide image ({exc})",
                              "check the folder holds all instances of one slide") from exc
    base = wsi.levels[0]
    levels = []
    for level in wsi.levels:
        size = level.size
        spacing = level.pixel_spacing  # mm per pixel
        mpp = float(spacing.width) * 1000.0 if spacing is not None else None
        levels.append(Level(int(size.width), int(size.height),
                            float(base.size.width) / float(size.width), mpp))

    def read(level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        scale = levels[level].downsample
        try:
            # wsidicom takes the location in the level's own pixels.
            region = wsi.read_region((int(x / scale), int(y / scale)), wsi.levels[level].level,
                                     (width, height))
        except Exception as exc:
            raise ImageInputError(f"{path.name}: a tile near ({x}, {y}) is corrupt ({exc})",
                                  "copy the slide again") from exc
        return _rgba_to_rgb(region)

    return SlideReader("dicom", levels, read, wsi.close)


def _pyramid_in_subifds(path: Path) -> bool:
    """OME-TIFF, and TIFFs written with SubIFD levels (bfconvert, ``vips tiffsave --subifd``,
    tifffile's ``subifds=``), keep their pyramid in SubIFDs, which OpenSlide does not see (it
    reads one IFD chain): read them with tifffile, which exposes them as ``series[0].levels``."""
    if not path.name.lower().endswith((".ome.tif", ".ome.tiff", ".tif", ".tiff")):
        return False
    tifffile: Any = require("tifffile", "pathology", "reading TIFF slides")
    try:
        with tifffile.TiffFile(str(path)) as tif:
            return bool(tif.is_ome or (tif.pages[0].subifds and len(tif.series[0].levels) > 1))
    except Exception:
        return False


def _open_tifffile(path: Path) -> SlideReader:
    from medgem.inputs.tiff_slide import open_tifffile_pyramid

    tif, sizes, mpp, read = open_tifffile_pyramid(path)
    levels = [Level(w, h, d, mpp * d if mpp else None) for w, h, d in sizes]
    return SlideReader("ome-tiff" if tif.is_ome else "tiff-subifd", levels, read, tif.close)


@contextlib.contextmanager
def open_slide(path: Path, options: ImagingOptions) -> Iterator[SlideReader]:
    """Open a slide file, DICOM WSI folder, or zip of DICOM WSI files; close it afterwards
    (a zip's files are extracted to a temporary folder, removed after the slide is closed)."""
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            reader = _open_wsidicom(path)
        elif zipfile.is_zipfile(path):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medgem-wsi-")))
            _extract(path, folder, options)
            reader = _open_wsidicom(folder)
        elif _pyramid_in_subifds(path):
            reader = _open_tifffile(path)
        else:
            reader = _open_openslide(path)
        stack.callback(reader.close)
        yield reader


def _extract(path: Path, target: Path, options: ImagingOptions) -> None:
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > options.max_archive_bytes:
            raise ImageInputError(f"{path.name} expands past {options.max_archive_bytes:,} bytes",
                                  "unzip it yourself and pass the folder")
        for number, member in enumerate(members):
            (target / f"{number:05d}.dcm").write_bytes(archive.read(member))


def base_mpp(slide: SlideReader, options: ImagingOptions, name: str) -> tuple[float, str]:
    """Microns per pixel of level 0 and where the number came from.

    Raises:
        ImageInputError: the file carries no resolution and none was given.
    """
    if options.mpp is not None:
        return options.mpp, "given (--mpp)"
    if slide.levels[0].mpp:
        return slide.levels[0].mpp, "file"
    if slide.objective_power:
        return MICRONS_AT_1X / slide.objective_power, "estimated from objective power"
    raise ImageInputError(
        f"{name} carries no resolution (microns per pixel), so 10x cannot be found",
        "pass --mpp with the scan's microns per pixel at full resolution (e.g. 0.25 for 40x)")


def patch_level(levels: list[Level], mpp0: float, target_mpp: float) -> int:
    """The coarsest level still at least as fine as ``target_mpp`` (5% slack), else level 0."""
    best = 0
    for index, level in enumerate(levels):
        if mpp0 * level.downsample <= target_mpp * 1.05:
            best = index
    return best


def mask_level(levels: list[Level], cell0: float, name: str) -> int:
    """The level tissue detection reads: small enough to hold, fine enough to resolve a cell.

    Raises:
        ImageInputError: no level is small enough (a slide without a pyramid).
    """
    small = [i for i, lv in enumerate(levels) if lv.width * lv.height <= MASK_MAX_PIXELS]
    if not small:
        top = levels[-1]
        raise ImageInputError(
            f"{name}'s smallest level is {top.width}x{top.height}: no low-resolution level to find "
            "tissue on, and medgem will not decode a slide whole",
            "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)")
    fine_enough = [i for i in small if cell0 / levels[i].downsample >= MASK_MIN_CELL_PX]
    return max(fine_enough) if fine_enough else min(small)


def read_level_in_strips(slide: SlideReader, index: int) -> Image.Image:
    """A whole (small) level, read strip by strip."""
    level = slide.levels[index]
    out = Image.new("RGB", (level.width, level.height), (255, 255, 255))
    for top in range(0, level.height, STRIP_ROWS):
        rows = min(STRIP_ROWS, level.height - top)
        y0 = round(top * level.downsample)
        out.paste(slide.read(index, 0, y0, level.width, rows), (0, top))
    return out


def read_slide(path: Path, options: ImagingOptions) -> MedicalInput:
    """Prepare a whole-slide image as MedGemma 1.5 reads it (see the module docstring).

    Raises:
        ImageInputError: no resolution, no pyramid, a corrupt tile, or no tissue found.
    """
    with open_slide(path, options) as slide:
        return slide_to_input(slide, options, path.name)


def slide_to_input(slide: SlideReader, options: ImagingOptions, name: str) -> MedicalInput:
    """An open slide (a local file, or a PACS series read frame by frame) as MedGemma 1.5
    reads it: one path for both, so the same slide gives the same patches and prompt wherever
    it lives. Only ``slide.read`` touches pixels: the mask level in strips, then one region
    per sampled patch.

    Raises:
        ImageInputError: no resolution, no pyramid, a corrupt tile, or no tissue found.
    """
    mpp0, mpp_from = base_mpp(slide, options, name)
    magnification = options.magnification or 10.0
    target = MICRONS_AT_1X / magnification
    cell0 = PATCH_SIDE * target / mpp0
    base = slide.levels[0]
    if cell0 > min(base.width, base.height):
        raise ImageInputError(
            f"{name} is {base.width}x{base.height} px at {mpp0:g} um/px: smaller than one "
            f"{PATCH_SIDE}-px patch at {magnification:g}x",
            "pass a higher --magnification, or send it as an ordinary picture")
    started = time.perf_counter()
    m_index = mask_level(slide.levels, cell0, name)
    overview = read_level_in_strips(slide, m_index)
    mask = tissue_mask(overview)
    mask_s = time.perf_counter() - started
    m_level = slide.levels[m_index]
    cells = tissue_cells(mask, m_level.downsample, cell0, base.width, base.height)
    if not cells:
        raise ImageInputError(
            f"no tissue found on {name} (no {PATCH_SIDE}-px cell at {magnification:g}x "
            "is at least a quarter stained tissue)",
            "check it is the right slide; blank glass has nothing to describe")
    chosen = sample_cells(cells, options.max_patches, options.patch_seed)
    p_index = patch_level(slide.levels, mpp0, target)
    p_level = slide.levels[p_index]
    side = max(1, round(cell0 / p_level.downsample))
    started = time.perf_counter()
    patches = []
    for c in chosen:
        region = slide.read(p_index, c.x, c.y, side, side)
        if region.size != (PATCH_SIDE, PATCH_SIDE):
            region = region.resize((PATCH_SIDE, PATCH_SIDE), Image.Resampling.BOX)
        patches.append(region)
    read_s = time.perf_counter() - started
    drawn = draw_overview(overview, mask, m_level.downsample, cell0, cells, chosen)
    facts: dict[str, object] = {
        "format": "slide",
        "vendor": slide.vendor,
        "levels": [{"level": i, "width": lv.width, "height": lv.height,
                    "downsample": round(lv.downsample, 3),
                    "mpp": round(mpp0 * lv.downsample, 4)} for i, lv in enumerate(slide.levels)],
        "mpp": round(mpp0, 4),
        "mpp_source": mpp_from,
        "magnification": magnification,
        "mask_level": m_index,
        "patch_level": p_index,
        "patch_region_px": side,
        "tissue_fraction": round(float(mask.mean()), 4),
        "tissue_cells": len(cells),
        "patches": len(chosen),
        "patch_seed": options.patch_seed,
        "patch_origins": [[c.x, c.y] for c in chosen],
        "seconds_tissue": round(mask_s, 3),
        "seconds_patches": round(read_s, 3),
    }
    return MedicalInput(
        kind="slide",
        images=patches,
        modality="SM",
        study_date=None,
        description=(f"slide: {len(chosen)} of {len(cells)} tissue patches {PATCH_SIDE}x{PATCH_SIDE} "
                     f"at {magnification:g}x ({target:g} um/px), level {p_index}"),
        source=name,
        metadata=facts,
        overview=drawn,
    )
