"""Stacks of slices -> the RGB images MedGemma gets: CT as three HU windows, MR min-max per volume.

Three sources of stacks share one display step (``stack_to_rgb``): a DICOM series (one file per
slice), a multi-frame DICOM, and a 3-D array (NIfTI).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from medgem.errors import ImageInputError
from medgem.inputs import dicom
from medgem.inputs.options import ImagingOptions, MedicalInput, raise_hint
from medgem.inputs.series import Series, check_uniform, sample_indices, sort_slices
from medgem.inputs.windows import ct_to_rgb, grey_to_rgb, minmax_to_uint8, window_to_uint8


def stack_to_rgb(values: NDArray[np.float32], modality: str | None, options: ImagingOptions, *,
                 inverted: bool = False) -> tuple[NDArray[np.uint8], str]:
    """Display a grey stack (S, H, W) of modality values as RGB (S, H, W, 3); returns it with
    the name of the window used.

    CT gets the three HU windows unless ``options.window`` overrides them; everything else is
    min-max scaled over the whole stack, so slices keep their relative brightness. ``inverted``
    (MONOCHROME1) data is shown inverted, except under CT windows, which are defined in HU.
    """
    override = options.window_range
    if override is not None:
        grey, used = window_to_uint8(values, *override), f"window {override[0]:g}..{override[1]:g}"
    elif (modality or "").upper() == "CT":
        windows = " ".join(f"{lo:g}..{hi:g}" for lo, hi in options.ct_windows)
        return ct_to_rgb(values, options.ct_windows), f"ct 3 windows {windows}"
    else:
        grey, used = minmax_to_uint8(values), "volume min-max"
    if inverted:
        grey = 255 - grey
    return grey_to_rgb(grey), used


def to_images(rgb: NDArray[np.uint8]) -> list[Image.Image]:
    """(S, H, W, 3) uint8 -> S RGB PIL images."""
    return [Image.fromarray(np.ascontiguousarray(frame), mode="RGB") for frame in rgb]


def slice_spacing(series: Series) -> float | None:
    """The median distance between neighbouring slices' positions (mm), or None when a slice
    has no position."""
    positions = [ds.get("ImagePositionPatient") for _, ds in series.members]
    if len(positions) < 2 or any(not p or len(p) != 3 for p in positions):
        return None
    steps = np.linalg.norm(np.diff(np.asarray(positions, dtype=float), axis=0), axis=1)
    return round(float(np.median(steps)), 4)


def series_to_input(series: Series, options: ImagingOptions, source: str, series_count: int
                    ) -> MedicalInput:
    """Sort, sample and display one DICOM series (one slice per file).

    Raises:
        ImageInputError: mixed sizes, damaged slices, or too many pixels.
    """
    rows, cols = check_uniform(series, source)
    sorted_by = sort_slices(series)
    picked = sample_indices(len(series.members), options.max_slices)
    if len(picked) * rows * cols > options.max_total_pixels:
        raise ImageInputError(
            f"{source}: {len(picked)} slices of {cols}x{rows} exceed {options.max_total_pixels:,} pixels",
            f"lower --max-slices, or {raise_hint('max_total_pixels')}")
    modality = options.modality or series.modality or None
    first_full: Any = None
    colour: list[NDArray[np.uint8]] = []
    grey: list[NDArray[np.float32]] = []
    for i in picked:
        options.check_cancelled()
        member, _ = series.members[i]
        ds = dicom.read_header(member, pixels=True)
        first_full = first_full if first_full is not None else ds
        frame = dicom.decode_frames(ds, member.name, 0 if dicom.frame_count(ds) > 1 else None)
        if dicom.is_colour(ds):
            colour.append(dicom.colour_to_rgb8(ds, frame))
        else:
            grey.append(dicom.modality_values(ds, frame))
    if colour and grey:
        raise ImageInputError(f"series {series.short_uid} in {source} mixes colour and grey slices",
                              "pass the slices of one kind")
    if colour:
        rgb, used = np.stack(colour), "colour"
    else:
        inverted = first_full.get("PhotometricInterpretation") == "MONOCHROME1"
        rgb, used = stack_to_rgb(np.stack(grey), modality, options, inverted=inverted)
    facts = dicom.header_facts(first_full)
    facts.update(
        slices_total=len(series.members), slices_sent=len(picked), sampled_indices=picked,
        sorted_by=sorted_by, window=used, series=series.short_uid, series_count=series_count,
    )
    spacing = slice_spacing(series)
    if spacing is not None:
        facts["slice_spacing_mm"] = spacing
    kind: Literal["image", "volume"] = "volume" if len(picked) > 1 else "image"
    what = f"{len(picked)} of {len(series.members)} slices, " if kind == "volume" else ""
    return MedicalInput(
        kind=kind, images=to_images(rgb), modality=modality,
        study_date=dicom.study_date(first_full), source=source, metadata=facts,
        description=f"{modality or 'unknown'} {kind}: {what}{cols}x{rows}, {used}",
    )


#: Modalities whose multi-frame files are frames in time (or mask frames), not slices through
#: the body; the prompt follows each with FRAME n (``request.compose.FRAME_MODALITIES``).
CINE_NAMES = {"US": "ultrasound cine loop", "XA": "angiography run", "RF": "fluoroscopy run",
              "IVUS": "intravascular ultrasound pullback", "ES": "endoscopy video",
              "SEG": "segmentation mask"}


def multiframe_to_input(ds: Any, options: ImagingOptions, source: str) -> MedicalInput:
    """Every frame of a multi-frame DICOM, sampled: CT/MR frames as the slices of a volume,
    other modalities' frames as a sequence in time (an ultrasound cine loop), told apart in
    ``metadata["sequence"]`` ("slices" or "frames") so the prompt can say which."""
    count = dicom.frame_count(ds)
    picked = sample_indices(count, options.max_slices)
    frames: dict[int, NDArray[Any]] = {}
    if len(picked) == count:
        options.check_cancelled()
        everything = dicom.decode_frames(ds, source)  # (F, H, W[, 3])
        frames = {i: everything[i] for i in picked}
    else:  # decode only the sampled frames: compressed cine loops are slow to decode whole
        for i in picked:
            options.check_cancelled()
            frames[i] = dicom.decode_frames(ds, source, i)
    modality = options.modality or str(ds.get("Modality", "") or "") or None
    if dicom.is_colour(ds):
        rgb, used = np.stack([dicom.colour_to_rgb8(ds, frames[i]) for i in picked]), "colour"
    else:
        values = np.stack([dicom.modality_values(ds, frames[i], i) for i in picked])
        inverted = ds.get("PhotometricInterpretation") == "MONOCHROME1"
        rgb, used = stack_to_rgb(values, modality, options, inverted=inverted)
    facts = dicom.header_facts(ds)
    sequence = "frames" if (modality or "").upper() in CINE_NAMES else "slices"
    facts.update(slices_total=count, slices_sent=len(picked), sampled_indices=picked, window=used,
                 sequence=sequence)
    rows, cols = rgb.shape[1:3]
    warnings: list[str] = []
    non_image = dicom.non_image_kind(ds)
    if non_image is not None:
        what = f"{modality or 'unknown'} {non_image.split(' (')[0].removeprefix('an ').removeprefix('a ')}"
        warnings.append(f"{non_image} is not an image; forced with --allow-non-image, its "
                        f"{count} planes go to the model as grey images")
    elif sequence == "frames":
        name = CINE_NAMES.get((modality or "").upper(), "frame sequence")
        what = f"{modality or 'unknown'} {name}"
        warnings.append(f"a multi-frame {modality or 'unknown'} file: its frames go to the model "
                        f"as a {name} in order (FRAME n), not as CT/MR slices; MedGemma was "
                        f"trained on CT/MR volumes and single images, not on frame sequences")
    else:
        what = f"{modality or 'unknown'} volume"
    if dicom.burned_in(ds):
        warnings.append("Burned In Annotation = YES: text may be burned into the pixels")
    unsaid = dicom.burned_in_warning(ds, options)
    if unsaid:
        warnings.append(unsaid)
    return MedicalInput(
        kind="volume", images=to_images(rgb), modality=modality, study_date=dicom.study_date(ds),
        description=f"{what}: {len(picked)} of {count} frames, {cols}x{rows}, {used}",
        source=source, metadata=facts, warnings=warnings,
    )


def array_to_input(volume: NDArray[Any], modality: str | None, options: ImagingOptions, source: str,
                   facts: dict[str, object]) -> MedicalInput:
    """A 3-D array (S, H, W) of modality values (e.g. NIfTI) -> sampled, displayed volume."""
    count = volume.shape[0]
    picked = sample_indices(count, options.max_slices)
    values = np.asarray(volume[picked], dtype=np.float32)
    rgb, used = stack_to_rgb(values, modality, options)
    rows, cols = rgb.shape[1:3]
    facts = dict(facts, rows=rows, columns=cols, slices_total=count, slices_sent=len(picked),
                 sampled_indices=picked, window=used)
    kind: Literal["image", "volume"] = "volume" if len(picked) > 1 else "image"
    return MedicalInput(
        kind=kind, images=to_images(rgb), modality=modality, study_date=None,
        description=f"{modality or 'unknown'} {kind}: {len(picked)} of {count} slices, {cols}x{rows}, {used}",
        source=source, metadata=facts,
    )
