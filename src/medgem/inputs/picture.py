"""Ordinary pictures (PNG, JPEG, TIFF, ...) through Pillow, guarded against decompression bombs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medgem.errors import ImageInputError
from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.windows import grey_to_rgb, minmax_to_uint8


def picture_to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> RGB; 16-bit and float grey are stretched to full range, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        grey = minmax_to_uint8(np.asarray(image))
        return Image.fromarray(grey_to_rgb(grey), mode="RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def read_picture(path: Path, options: ImagingOptions) -> MedicalInput:
    """Open a picture file as one RGB image (frame ``options.frame`` of a multi-page file).

    Raises:
        ImageInputError: not an image, truncated, or declaring more pixels than allowed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > options.max_pixels:
                    raise ImageInputError(
                        f"{path.name} declares {width}x{height} pixels, over the limit of "
                        f"{options.max_pixels:,} (possible decompression bomb)",
                        "raise ImagingOptions.max_pixels if the image is genuine",
                    )
                frames = int(getattr(image, "n_frames", 1))
                if options.frame is not None:
                    if not 0 <= options.frame < frames:
                        raise ImageInputError(f"{path.name} has {frames} frame(s); --frame "
                                              f"{options.frame} does not exist", f"use 0..{frames - 1}")
                    image.seek(options.frame)
                image.load()
                original_mode = image.mode
                rgb = picture_to_rgb(ImageOps.exif_transpose(image) or image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{path.name} is too large to open safely ({exc})",
                              "raise ImagingOptions.max_pixels if the image is genuine") from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{path.name} is not an image Pillow can read",
                              "pass a PNG, JPEG, DICOM or NIfTI file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{path.name} is truncated or damaged ({exc})",
                              "copy the file again") from exc
    modality = options.modality.upper() if options.modality else None
    return MedicalInput(
        kind="image", images=[rgb], modality=modality, study_date=None,
        description=f"{modality or 'picture'} image: {rgb.width}x{rgb.height}", source=path.name,
        metadata={"format": "picture", "rows": rgb.height, "columns": rgb.width,
                  "mode": original_mode, "frames": frames},
    )
