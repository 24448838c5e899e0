"""The one front door for inputs: paths, uploaded bytes, data URLs and PIL images become the RGB
images the model gets, through the imaging readers (the same pixels whichever surface they came
in by), with DICOM de-identified before anything is kept.

Every surface uses these functions: the Python API and the CLI (paths, PIL images), the OpenAI
endpoint (data URLs and allowed local paths), the web page (uploads), the evaluation harness
(dataset images) and the audit trail (what may be stored).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgem.errors import ImageInputError, UnsupportedInputError

if TYPE_CHECKING:
    from PIL import Image

    from medgem.inputs.options import ImagingOptions

log = logging.getLogger("medgem")


@dataclass
class LoadedImages:
    """What an input became: RGB images in order, a display name per image (never PHI), the
    volume modality when the input was a CT/MR volume, and each image's modality."""

    images: list[Image.Image] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    volume_modality: str | None = None
    modalities: list[str | None] = field(default_factory=list)
    #: "slide" when the images are a whole-slide image's patches (pathology prompt layout).
    layout: str | None = None
    #: text that goes with the images (a PDF's text layer when asked for).
    text: str | None = None


def read_images(paths: Sequence[Path], options: ImagingOptions | None = None) -> LoadedImages:
    """Read pictures, DICOM files, DICOM folders/zips, NIfTI volumes, slides and PDFs.

    Several inputs are ordered by study date when the files carry one (longitudinal studies).
    ``options`` carries the imaging choices (patches, seed, magnification, page limit).

    Raises:
        ImageInputError: a missing or unreadable file, with what to do.
    """
    from medgem.inputs.load import load_medical_inputs

    for path in paths:
        if not path.exists():
            raise ImageInputError(f"no image at '{path}'", "check the path")
    loaded = LoadedImages()
    for item in load_medical_inputs(list(paths), options):
        if item.kind == "volume":
            loaded.volume_modality = item.modality or "CT"
        if item.kind == "slide":
            loaded.layout = "slide"
        if item.text:
            loaded.text = item.text if loaded.text is None else f"{loaded.text}\n\n{item.text}"
        loaded.images.extend(item.images)
        loaded.sources.extend([item.source] * len(item.images))
        loaded.modalities.extend([item.modality] * len(item.images))
    return loaded


def images_from_bytes(data: bytes, mime: str | None = None, name: str = "upload",
                      options: ImagingOptions | None = None) -> LoadedImages:
    """Decode uploaded bytes (a picture, a DICOM file or a zipped DICOM series) through the same
    readers as files: the format is found from the content, the upload keeps its own name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "upload"
    with tempfile.TemporaryDirectory(prefix="medgem-upload-") as folder:
        path = Path(folder) / safe
        path.write_bytes(data)
        return read_images([path], options)


def from_pil(image: Image.Image) -> Image.Image:
    """A PIL image as the readers would give it (16-bit grey stretched, alpha on black)."""
    from medgem.inputs.picture import picture_to_rgb

    return picture_to_rgb(image)


def load_inputs(items: Sequence[Any], options: ImagingOptions | None = None) -> LoadedImages:
    """PIL images and paths together, in order: what ``MedGemma.ask(images=...)`` takes.

    Raises:
        UnsupportedInputError: a CT/MR volume or a whole-slide image mixed with other images.
        ImageInputError: an unreadable input.
    """
    from PIL import Image

    pictures = [from_pil(item) for item in items if isinstance(item, Image.Image)]
    paths = [Path(item) for item in items if not isinstance(item, Image.Image)]
    loaded = LoadedImages(pictures, [f"image {i + 1}" for i in range(len(pictures))], None,
                          [None] * len(pictures))
    if not paths:
        return loaded
    read = read_images(paths, options)
    alone = read.volume_modality is not None or read.layout is not None
    if alone and (pictures or len(paths) > 1):
        what = "a whole-slide image" if read.layout else "a CT/MR volume"
        raise UnsupportedInputError(
            f"{what} cannot be combined with other images in one question",
            "ask about it on its own",
        )
    if alone:
        return read
    return LoadedImages(loaded.images + read.images, loaded.sources + read.sources, None,
                        loaded.modalities + read.modalities, text=read.text)


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


def try_data_url(url: str) -> tuple[bytes, str] | None:
    """(bytes, mime) of a valid base64 data URL, else None (for digests of what was sent)."""
    try:
        data, mime = decode_data_url(url)
    except ImageInputError:
        return None
    return data, mime or "application/octet-stream"


def deidentify_upload(data: bytes, mime: str, key: bytes, *, profile_options: Sequence[str] = (),
                      allow_burned_in: bool = False,
                      limits: ImagingOptions | None = None) -> tuple[bytes | None, str]:
    """What may be stored of an upload: pictures as they are; a DICOM file, or each DICOM file
    of a zip (renumbered: export names may carry patient names), de-identified by the PS3.15
    basic profile with ``profile_options`` (see ``medgem.inputs.deid``).

    Returns (None, mime) when a DICOM input cannot be de-identified (damaged, burned-in
    annotation not allowed, a zip over the reading limits in ``limits``): it is then not kept.
    Slides (TIFF, DICOM WSI) and PDFs are never kept: their labels, macro images and metadata
    carry names; the record keeps their hashes only.
    """
    from medgem.inputs.dicom import looks_like_dicom
    from medgem.inputs.slide_detect import is_slide_or_document_upload

    if is_slide_or_document_upload(data):
        return None, mime

    is_zip = zipfile.is_zipfile(io.BytesIO(data))
    if not (is_zip or looks_like_dicom(data[:132]) or mime == "application/dicom"):
        return data, mime
    policy = (key, tuple(profile_options), allow_burned_in)
    try:
        if is_zip:
            return _deidentify_zip(data, policy, limits), "application/zip"
        return _deidentify_dicom(data, policy), "application/dicom"
    except Exception:  # never store what could not be cleaned
        log.warning("a DICOM input could not be de-identified; it is not kept")
        return None, mime


_Policy = tuple[bytes, tuple[str, ...], bool]


def _deidentify_dicom(data: bytes, policy: _Policy) -> bytes:
    import pydicom

    from medgem.inputs.deid import deidentify

    key, options, allow_burned_in = policy
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    cleaned = deidentify(dataset, key, options, allow_burned_in=allow_burned_in)
    out = io.BytesIO()
    cleaned.save_as(out)
    return out.getvalue()


def _deidentify_zip(data: bytes, policy: _Policy, limits: ImagingOptions | None) -> bytes:
    """Each member de-identified, under the same limits as reading (count, declared and
    inflated bytes), so a zip bomb costs nothing here either."""
    from medgem.inputs.limits import CountingReader, ReadBudget
    from medgem.inputs.options import ImagingOptions

    budget = ReadBudget(limits or ImagingOptions(), "the upload")
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        members = [info for info in source.infolist() if not info.is_dir()]
        budget.files(len(members))
        budget.declared_bytes(sum(info.file_size for info in members))
        for number, info in enumerate(members):
            budget.options.check_cancelled()
            with CountingReader(source.open(info), budget) as stream:
                member = stream.read()
            target.writestr(f"{number:05d}.dcm", _deidentify_dicom(member, policy))
    return out.getvalue()
