"""Is this path a whole-slide image? Decided from headers only, never from pixels."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from medgem.errors import require

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: A TIFF larger than this (one level) is treated as a slide, never decoded as a picture.
PICTURE_MAX_PIXELS = 64_000_000
_PEEK_FILES = 20


def is_slide_file(path: Path, head: bytes) -> bool:
    """A vendor slide extension, or a TIFF that is tiled, pyramidal or too big to be a picture."""
    if path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    if head[:4] not in TIFF_MAGIC:
        return False
    try:
        tifffile: Any = require("tifffile", "pathology", "reading TIFF slides")
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages[0]
            description = str(getattr(page, "description", "") or "")
            return bool(
                page.is_tiled
                or description.startswith("Aperio")
                or tif.is_ome
                or int(page.imagewidth) * int(page.imagelength) > PICTURE_MAX_PIXELS
            )
    except Exception:  # unreadable header: let the picture reader report it
        return False


def _sop_class(data: bytes | Path) -> str | None:
    import pydicom

    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return None
    return str(getattr(ds, "SOPClassUID", "") or "") or None


def _zip_holds_wsi(archive: Path | io.BytesIO) -> bool:
    """Whether one of a zip's first members is a whole-slide microscopy instance (each read
    up to its first 64 KiB, where the SOP class is)."""
    try:
        with zipfile.ZipFile(archive) as opened:
            for member in [m for m in opened.infolist() if not m.is_dir()][:_PEEK_FILES]:
                with opened.open(member) as handle:
                    if _sop_class(handle.read(64 * 1024)) == WSI_SOP_CLASS:
                        return True
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def is_dicom_wsi(path: Path) -> bool:
    """A folder or zip whose first DICOM files are whole-slide microscopy instances."""
    if not path.is_dir():
        return _zip_holds_wsi(path)
    try:
        files = [p for p in sorted(path.rglob("*")) if p.is_file()][:_PEEK_FILES]
    except OSError:
        return False
    return any(_sop_class(p) == WSI_SOP_CLASS for p in files)


def is_slide_or_document_upload(data: bytes) -> bool:
    """Uploaded bytes that must never be stored raw: a TIFF (slide files hold label and macro
    images), a PDF (metadata), or DICOM whole-slide instances (a LABEL instance is a photo of the
    glass label), alone or in a zip."""
    if data[128:132] == b"DICM":  # first: a DICOM preamble may itself look like a TIFF header
        return _sop_class(data) == WSI_SOP_CLASS
    return data[:4] in TIFF_MAGIC or b"%PDF-" in data[:1024] or _zip_holds_wsi(io.BytesIO(data))
