"""Turn what a user hands over (files, folders, bytes, data URLs) into model-ready images.

Photos go through PIL; DICOM, series, zips and NIfTI go through medgem.imaging (optional extra).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medgem.errors import ImageInputError

if TYPE_CHECKING:
    from PIL import Image

MAX_IMAGE_PIXELS = 64_000_000  # guards against decompression bombs in photos
_DICOM_MAGIC_OFFSET = 128
_PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class LoadedImages:
    images: list[Image.Image] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    volume_modality: str | None = None
    modalities: list[str | None] = field(default_factory=list)


def read_images(paths: Sequence[Path]) -> LoadedImages:
    """Read image files, DICOM files, DICOM folders/zips and NIfTI volumes.

    Several inputs are ordered by study date when the files carry one (longitudinal studies).

    Raises:
        ImageInputError: a missing or unreadable file, with what to do.
    """
    for path in paths:
        if not path.exists():
            raise ImageInputError(f"no image at '{path}'", "check the path")
    if all(path.is_file() and path.suffix.lower() in _PHOTO_SUFFIXES for path in paths):
        loaded = LoadedImages()
        for path in paths:
            loaded.images.append(open_photo(path.read_bytes(), path.name))
            loaded.sources.append(path.name)
            loaded.modalities.append(None)
        return loaded
    from medgem.imaging import load_medical_inputs

    inputs = load_medical_inputs(list(paths))
    loaded = LoadedImages()
    for item in inputs:
        if item.kind == "volume":
            loaded.volume_modality = item.modality or "CT"
        loaded.images.extend(item.images)
        loaded.sources.extend([item.source] * len(item.images))
        loaded.modalities.extend([item.modality] * len(item.images))
    return loaded


def open_photo(data: bytes, name: str = "image") -> Image.Image:
    """Decode PNG/JPEG/... bytes to RGB, refusing non-images and decompression bombs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageInputError(
                    f"'{name}' is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} limit",
                    "downscale the image before sending it",
                )
            probe.load()
            return probe.convert("RGB")
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageInputError(
            f"'{name}' is not a readable image ({type(exc).__name__})",
            "send a PNG, JPEG or DICOM file",
        ) from exc


def is_dicom_bytes(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def images_from_bytes(data: bytes, mime: str | None = None, name: str = "upload") -> LoadedImages:
    """Decode uploaded bytes: a photo, a DICOM file, or a zipped DICOM series."""
    loaded = LoadedImages()
    if mime == "application/dicom" or is_dicom_bytes(data) or mime == "application/zip" or data[:4] == b"PK\x03\x04":
        import tempfile

        suffix = ".zip" if data[:4] == b"PK\x03\x04" else ".dcm"
        with tempfile.TemporaryDirectory(prefix="medgem-upload-") as tmp:
            path = Path(tmp) / f"{Path(name).stem or 'upload'}{suffix}"
            path.write_bytes(data)
            return read_images([path])
    loaded.images.append(open_photo(data, name))
    loaded.sources.append(name)
    loaded.modalities.append(None)
    return loaded


def decode_data_url(url: str) -> tuple[bytes, str | None]:
    """Split a ``data:<mime>;base64,<payload>`` URL.

    Raises:
        ImageInputError: not a base64 data URL, or invalid base64.
    """
    if not url.startswith("data:") or "," not in url:
        raise ImageInputError(
            "image_url must be a data URL (data:image/png;base64,...)",
            "encode the image as base64 in a data URL",
        )
    header, payload = url[5:].split(",", 1)
    if not header.endswith(";base64"):
        raise ImageInputError("image data URLs must be base64-encoded", "use ';base64,'")
    mime = header[: -len(";base64")] or None
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError("the image data URL holds invalid base64", "re-encode the image") from exc
