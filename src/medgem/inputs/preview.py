"""Show what the model saw: PNGs of every prepared image or slice, plus encode/resize helpers."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from medgem.errors import InputError
from medgem.inputs.options import MedicalInput

#: MedGemma's vision tower input side; the model's processor resizes to this.
MODEL_IMAGE_SIDE = 896

#: zlib level for PNGs: 1 is ~5x faster than Pillow's default 6 on CT slices, files ~20% larger.
PNG_COMPRESS_LEVEL = 1


def _stem(source: str) -> str:
    name = source.rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii", ".dcm", ".zip", ".png", ".jpg", ".jpeg", ".svs", ".tiff",
                   ".tif", ".ndpi", ".mrxs", ".scn", ".pdf"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"


def save_preprocessed(inputs: Sequence[MedicalInput], directory: str | Path) -> list[Path]:
    """Write one PNG per image or slice, exactly the pixels the model gets, with no metadata.

    Names are ``NN_<source>.png`` for images, ``NN_<source>_slice_SSS.png`` for volume slices
    (SSS counts from 1, as in the prompt's ``SLICE n``), ``NN_<source>_frame_FFF.png`` for the
    frames of a cine loop (ultrasound, angiography: ``FRAME n``), ``NN_<source>_patch_PPP.png`` for slide
    patches (plus ``NN_<source>_overview.png``: tissue and patch grid drawn on the slide) and
    ``NN_<source>_page_PPP.png`` for PDF pages.

    Args:
        inputs: prepared inputs, in prompt order.
        directory: created when missing.

    Returns:
        The files written, in order.

    Raises:
        InputError: ``directory`` is a file, or cannot be made.
    """
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file by that name, or under one; no permission
        raise InputError(f"cannot write the preprocessed images to {out} ({exc.strerror or exc})",
                         "give --save-preprocessed a folder (it is made when missing)") from None
    written: list[Path] = []
    for number, item in enumerate(inputs, start=1):
        stem = f"{number:02d}_{_stem(item.source)}"
        pictures = list(enumerate(item.images, start=1))
        if item.overview is not None:
            pictures.insert(0, (0, item.overview))
        for index, image in pictures:
            target = out / _name(stem, item.kind, index, frames=item.metadata.get("sequence") == "frames")
            # A fresh image carries no text chunks: nothing from the source header is written.
            Image.frombytes("RGB", image.size, image.convert("RGB").tobytes()).save(
                target, "PNG", compress_level=PNG_COMPRESS_LEVEL)
            written.append(target)
    return written


def _name(stem: str, kind: str, index: int, *, frames: bool = False) -> str:
    if kind == "image":
        return f"{stem}.png"
    if index == 0:
        return f"{stem}_overview.png"
    # a cine loop's images are frames in time, as its prompt says (FRAME n), not slices
    word = "frame" if frames else {"volume": "slice", "slide": "patch", "document": "page"}[kind]
    return f"{stem}_{word}_{index:03d}.png"


def to_model_size(image: Image.Image, side: int = MODEL_IMAGE_SIDE) -> Image.Image:
    """Resize to ``side`` x ``side`` with bilinear filtering, as the model's processor does.

    Only used to measure or preview; the processor does the real resize.
    """
    return image.resize((side, side), Image.Resampling.BILINEAR)


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """Encode for transport: JPEG at ``quality`` (the serving side uses 95), or PNG (lossless,
    fast zlib level: previews are written often and read rarely)."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
