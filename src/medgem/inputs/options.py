"""What the imaging layer is asked to do (``ImagingOptions``) and what it hands on (``MedicalInput``).

Both are frozen dataclasses built at the edge (CLI flags, HTTP bodies, Python callers) and passed
inward; nothing here reads the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from medgem.errors import InputCancelled

#: Each reading limit: (ImagingOptions field, CLI flag, environment variable the CLI reads).
LIMITS: dict[str, tuple[str, str]] = {
    "slice_limit": ("--slice-limit", "MEDGEM_SLICE_LIMIT"),
    "max_total_pixels": ("--max-total-pixels", "MEDGEM_MAX_TOTAL_PIXELS"),
    "max_archive_bytes": ("--max-archive-mb", "MEDGEM_MAX_ARCHIVE_MB"),
    "max_pixels": ("--max-pixels", "MEDGEM_MAX_PIXELS"),
    "max_slices": ("--max-slices", "MEDGEM_MAX_SLICES"),
}


def raise_hint(limit: str) -> str:
    """How to raise one reading limit, e.g. "raise it with --slice-limit (MEDGEM_SLICE_LIMIT,
    ImagingOptions.slice_limit)"."""
    flag, env = LIMITS[limit]
    return f"raise it with {flag} ({env}, ImagingOptions.{limit}) if the input is genuine"

#: How the prompt lays out what the inputs became: "images" as they are, "volume" (slices or
#: frames, each followed by its marker, after an instruction), "slide" (patches after the
#: pathology instruction).
Layout = Literal["images", "volume", "slide"]

#: A display window as (low, high) in the image's own units (Hounsfield units for CT).
WindowRange = tuple[float, float]

#: The CT windows MedGemma 1.5 was trained with (MEDGEMMA-FACTS.md): red = wide, green = soft
#: tissue (W350/L40), blue = brain.
DEFAULT_CT_WINDOWS: tuple[WindowRange, WindowRange, WindowRange] = (
    (-1024.0, 1024.0),
    (-135.0, 215.0),
    (0.0, 80.0),
)


@dataclass(frozen=True)
class ImagingOptions:
    """How to turn a medical file into the images the model sees.

    Attributes:
        window: a (centre, width) override; replaces the file's VOI window and, for CT, the three
            RGB windows with one grey window.
        frame: for a multi-frame DICOM or multi-page image, the 0-based frame to use as one image;
            None treats a multi-frame DICOM as a volume.
        series: which series of a folder or zip to use: the full SeriesInstanceUID or any unique
            part of it (the short UID that errors and ``medgem inspect`` print).
        modality: a hint for inputs that carry none (NIfTI, PNG): "CT" or "MR".
        max_slices: most slices (or frames) sent to the model from one volume or cine loop,
            chosen uniformly: the number of images one input costs the model.
        slice_limit: most files one folder or zip may hold, and most frames one file may
            declare; counted before any file is read.
        ct_windows: the (low, high) HU windows for the red, green and blue channels.
        max_pixels: most pixels one frame may declare (decompression-bomb guard).
        max_total_pixels: most pixels (rows x columns x frames, summed over every header) one
            input may declare; checked as each header is read, before any pixel is decoded.
        max_archive_bytes: most bytes a zip may expand to: its members' declared sizes are
            summed before anything is inflated, and the bytes really inflated are counted too.
        allow_non_image: send DICOM objects that are not images (RT dose grids, segmentation
            masks, parametric maps) as images anyway; refused by default.
        allow_burned_in: read DICOM images that declare Burned In Annotation = YES (text such
            as names burned into the pixels); refused by default.
        cancelled: called between files, members and frames; when it returns True reading
            stops with ``InputCancelled`` (the server passes "has the client left?").
        max_patches: most 896-px patches sent from one whole-slide image (sampled by seed).
        patch_seed: the seed of that sample (same seed, same patches).
        magnification: objective magnification of the patches (10 = about 1 um/px); None = 10x.
        mpp: microns per pixel of a slide's full-resolution level, for files that lack it.
        max_pages: most pages one PDF may have (longer documents are refused).
        pdf_text: also send a PDF's text layer (after the page images).
    """

    window: tuple[float, float] | None = None
    frame: int | None = None
    series: str | None = None
    modality: str | None = None
    max_slices: int = 85
    slice_limit: int = 1000
    ct_windows: tuple[WindowRange, WindowRange, WindowRange] = DEFAULT_CT_WINDOWS
    max_pixels: int = 100_000_000
    max_total_pixels: int = 600_000_000
    max_archive_bytes: int = 512 * 1024**2
    max_patches: int = 125
    patch_seed: int = 0
    magnification: float | None = None
    mpp: float | None = None
    max_pages: int = 20
    pdf_text: bool = False
    allow_non_image: bool = False
    allow_burned_in: bool = False
    cancelled: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_slices < 1:
            raise ValueError("max_slices must be at least 1")
        if min(self.slice_limit, self.max_pixels, self.max_total_pixels, self.max_archive_bytes) < 1:
            raise ValueError("the reading limits must be at least 1")
        if self.max_patches < 1 or self.max_pages < 1:
            raise ValueError("max_patches and max_pages must be at least 1")
        if (self.magnification is not None and self.magnification <= 0) or (
                self.mpp is not None and self.mpp <= 0):
            raise ValueError("magnification and mpp must be positive")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError("window width must be positive")
        for low, high in self.ct_windows:
            if high <= low:
                raise ValueError(f"CT window {low}..{high} is empty: high must exceed low")

    def check_cancelled(self) -> None:
        """Stop reading when the caller's ``cancelled`` says so.

        Raises:
            InputCancelled: the caller cancelled (e.g. the client left).
        """
        if self.cancelled is not None and self.cancelled():
            raise InputCancelled("reading the input was cancelled", "send it again")

    @property
    def window_range(self) -> WindowRange | None:
        """The override window as (low, high), or None."""
        if self.window is None:
            return None
        centre, width = self.window
        return (centre - width / 2.0, centre + width / 2.0)


@dataclass(frozen=True)
class MedicalInput:
    """One prepared input: the RGB images the model gets plus what a user may see about them.

    Attributes:
        kind: "image" for one picture, "volume" for sampled slices of a series or 3-D file,
            "slide" for the tissue patches of a whole-slide image, "document" for PDF pages.
        images: RGB images in order (one per sampled slice for a volume).
        modality: DICOM modality ("CT", "MR", "CR", ...) or None when unknown.
        study_date: ISO date (YYYY-MM-DD) of the study when known; used to order longitudinal
            inputs, never written into previews or inspect output.
        description: one line, no PHI, e.g. "CT volume: 85 of 120 slices, 512x512, 3 windows".
        source: file or folder name only (no directories).
        metadata: facts without PHI (size, spacing, slice count, window used, photometric, ...).
        text: text that goes to the model with the images (a PDF's text layer when asked).
        overview: for a slide, its low-resolution view with tissue and patches drawn on.
        warnings: what the user should know before sending it (a cine loop sent as frames, a
            forced non-image object); ``medgem inspect`` prints them.
    """

    kind: Literal["image", "volume", "slide", "document"]
    images: list[Image.Image]
    modality: str | None
    study_date: str | None
    description: str
    source: str
    metadata: dict[str, object] = field(default_factory=dict)
    text: str | None = None
    overview: Image.Image | None = None
    warnings: list[str] = field(default_factory=list)
