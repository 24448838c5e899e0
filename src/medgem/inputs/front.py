"""The one front door for inputs: ``read_inputs`` turns paths, data URLs, uploaded bytes and
PIL images into the RGB images the model gets (an ``Inputs``), through the readers' table (the
same pixels whichever surface they came in by), with DICOM de-identified before anything is kept.

Every surface uses it: the Python API and the CLI (paths, PIL images), the OpenAI endpoint
(data URLs and allowed local paths), the web page (uploads), the evaluation harness and tuning
(dataset images). The audit trail uses ``try_data_url`` and ``deidentify_upload`` (what may be
stored).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from medgem.errors import ImageInputError, UnsupportedInputError
from medgem.inputs.options import ImagingOptions, Layout, MedicalInput

if TYPE_CHECKING:
    from PIL import Image

    from medgem.inputs.pacs import FetchedStudy, StudyReference

log = logging.getLogger("medgem")

#: The MIME types a data URL may declare (None: none declared, the content decides).
DATA_URL_TYPES = frozenset({None, "image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif",
                            "application/dicom", "application/zip", "application/octet-stream",
                            "application/pdf", "image/tiff"})


@dataclass(frozen=True)
class Upload:
    """Bytes sent in (a web upload, a dataset image): the format is found from the content.

    Attributes:
        data: the file's bytes.
        mime: the type the sender declared (not trusted; the content decides).
        name: the name errors and display names use (directories are dropped).
    """

    data: bytes
    mime: str | None = None
    name: str = "upload"


#: What the door takes: a path, a ``data:`` URL (a str), uploaded bytes, a PIL image or a
#: study on a PACS (``medgem.inputs.pacs.StudyReference``).
InputItem: TypeAlias = "str | os.PathLike[str] | Upload | Image.Image | StudyReference"


@dataclass(frozen=True)
class Inputs:
    """What the inputs became, with the prompt layout they take.

    Attributes:
        items: each input as its reader prepared it, in prompt order: PIL images first, then
            the others by study date (oldest first; undated ones after, in the order given).
        layout: "images" (each image as it is, a PDF's text before the question), "volume"
            (one CT/MR volume or cine loop: an instruction, then each slice and ``SLICE n``) or
            "slide" (one whole-slide image's patches after the pathology instruction).
        studies: what was fetched from a PACS for these items (original UIDs, in memory only),
            for the audit trail and for sending a report back.
    """

    items: tuple[MedicalInput, ...] = ()
    layout: Layout = "images"
    studies: tuple[FetchedStudy, ...] = ()

    @property
    def images(self) -> list[Image.Image]:
        return [image for item in self.items for image in item.images]

    @property
    def sources(self) -> list[str]:
        """A display name per image (a file name or "image n", never PHI)."""
        return [item.source for item in self.items for _ in item.images]

    @property
    def modalities(self) -> list[str | None]:
        return [item.modality for item in self.items for _ in item.images]

    @property
    def volume_modality(self) -> str | None:
        """The modality a volume layout is introduced with (CT when the file names none)."""
        return (self.items[0].modality or "CT") if self.layout == "volume" else None

    @property
    def text(self) -> str | None:
        """Text that goes with the images (PDF text layers, when asked for), or None."""
        texts = [item.text for item in self.items if item.text]
        return "\n\n".join(texts) if texts else None


def read_inputs(items: Sequence[InputItem], options: ImagingOptions | None = None, *,
                allowed_dirs: Sequence[Path] | None = None, question: str | None = None) -> Inputs:
    """Read pictures, DICOM files, DICOM folders/zips, NIfTI volumes, slides and PDFs, given as
    paths, ``data:`` URLs, ``Upload`` bytes or PIL images: each file is read once.

    Args:
        items: the inputs; a str is a path (``file://`` allowed) unless it starts with
            ``data:``; http(s) URLs are refused (nothing is fetched).
        options: the imaging choices and reading limits (default ``ImagingOptions()``).
        allowed_dirs: folders paths may be read from; None allows any (local use), an empty
            list forbids every path (the server's default). Data URLs and uploads always pass.
        question: the question asked, whose words choose among a remote study's series.

    Returns:
        The images and their prompt layout.

    Raises:
        ImageInputError: a missing, forbidden or unreadable input, with what to do.
        UnsupportedInputError: a CT/MR volume or a whole-slide image mixed with other inputs.
    """
    from PIL import Image

    from medgem.inputs.pacs import StudyReference, read_study

    options = options or ImagingOptions()
    pictures = [_from_pil(item, n) for n, item in
                enumerate((i for i in items if isinstance(i, Image.Image)), start=1)]
    remote = [item for item in items if isinstance(item, StudyReference)]
    others = [_source(item, allowed_dirs) for item in items
              if not isinstance(item, (Image.Image, StudyReference))]
    for path in others:
        if isinstance(path, Path) and not path.exists():
            raise ImageInputError(f"no image at '{path}': the path does not exist", "check the path")
    fetched = [read_study(ref, options, prefer=(question or "",)) for ref in remote]
    read = sorted([*(_read(source, options) for source in others), *(item for item, _ in fetched)],
                  key=lambda item: (item.study_date is None, item.study_date or ""))
    alone = [item for item in read if item.kind in ("volume", "slide")]
    if alone and len(items) > 1:
        what = "a whole-slide image" if alone[0].kind == "slide" else "a CT/MR volume"
        raise UnsupportedInputError(f"{what} cannot be combined with other images in one question",
                                    "ask about it on its own")
    layout: Layout = "images"
    if alone:
        layout = "slide" if alone[0].kind == "slide" else "volume"
    return Inputs((*pictures, *read), layout, tuple(study for _, study in fetched))


def _from_pil(image: Image.Image, number: int) -> MedicalInput:
    from medgem.inputs.picture import picture_to_rgb

    rgb = picture_to_rgb(image)
    return MedicalInput(kind="image", images=[rgb], modality=None, study_date=None,
                        description=f"picture: {rgb.width}x{rgb.height}", source=f"image {number}")


def _source(item: str | os.PathLike[str] | Upload, allowed_dirs: Sequence[Path] | None) -> Path | Upload:
    """A path (checked against ``allowed_dirs``) or the bytes of an upload or data URL."""
    if isinstance(item, Upload):
        return item
    if isinstance(item, str) and item.startswith("data:"):
        data, mime = decode_data_url(item)
        if mime not in DATA_URL_TYPES:
            raise ImageInputError(f"image type '{mime}' is not supported", "send PNG, JPEG or DICOM")
        return Upload(data, mime)
    if isinstance(item, str) and item.startswith(("http://", "https://")):
        raise ImageInputError("remote image URLs are not fetched",
                              "send the image inline as a base64 data URL")
    text = os.fspath(item)
    return _allowed_path(Path(text[len("file://"):] if text.startswith("file://") else text),
                         allowed_dirs)


def _allowed_path(path: Path, allowed_dirs: Sequence[Path] | None) -> Path:
    if allowed_dirs is None:
        return path
    resolved = path.expanduser().resolve()
    for folder in allowed_dirs:
        if resolved.is_relative_to(folder.resolve()):
            return resolved
    raise ImageInputError(
        f"reading '{path.name}' from disk is not allowed",
        "send the image as a data URL, or ask the operator to allow its folder",
    )


def _read(source: Path | Upload, options: ImagingOptions) -> MedicalInput:
    """One input through the readers' table; an upload goes through a private temporary file
    under its own (sanitised) name."""
    from medgem.inputs.readers import READERS, detect_format

    if isinstance(source, Path):
        return READERS[detect_format(source)](source, options)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source.name).name) or "upload"
    with tempfile.TemporaryDirectory(prefix="medgem-upload-") as folder:
        path = Path(folder) / safe
        path.write_bytes(source.data)
        return READERS[detect_format(path)](path, options)


def decode_data_url(url: str, field: str = "image_url") -> tuple[bytes, str | None]:
    """Split a ``data:<mime>;base64,<payload>`` URL; messages name it as ``field`` (the request
    field it came in).

    Raises:
        ImageInputError: not a base64 data URL, or invalid base64.
    """
    if not url.startswith("data:") or "," not in url:
        raise ImageInputError(
            f"{field} must be a data URL (data:image/png;base64,...)",
            "encode the image as base64 in a data URL", param=field,
        )
    header, payload = url[5:].split(",", 1)
    if not header.endswith(";base64"):
        raise ImageInputError(f"{field}: image data URLs must be base64-encoded", "use ';base64,'", param=field)
    mime = header[: -len(";base64")] or None
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{field}: the image data URL holds invalid base64", "re-encode the image",
                              param=field) from exc


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
    clean = functools.partial(_deidentify_dicom, key=key, profile_options=profile_options,
                              allow_burned_in=allow_burned_in)
    try:
        if is_zip:
            return _deidentify_zip(data, clean, limits), "application/zip"
        return clean(data), "application/dicom"
    except Exception:  # never store what could not be cleaned
        log.warning("a DICOM input could not be de-identified; it is not kept")
        return None, mime


def _deidentify_dicom(data: bytes, *, key: bytes, profile_options: Sequence[str],
                      allow_burned_in: bool) -> bytes:
    import pydicom

    from medgem.inputs.deid import deidentify

    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    cleaned = deidentify(dataset, key, profile_options, allow_burned_in=allow_burned_in)
    out = io.BytesIO()
    cleaned.save_as(out)
    return out.getvalue()


def _deidentify_zip(data: bytes, clean: Callable[[bytes], bytes],
                    limits: ImagingOptions | None) -> bytes:
    """Each member de-identified, under the same limits as reading (count, declared and
    inflated bytes), so a zip bomb costs nothing here either."""
    from medgem.inputs.limits import CountingReader, ReadBudget

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
            target.writestr(f"{number:05d}.dcm", clean(member))
    return out.getvalue()
