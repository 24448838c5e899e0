"""The visible table of readers: a name per input format, and how a path is matched to one.

A reader takes (path, options) and returns one ``MedicalInput``. Detection looks at what the path
is (folder, zip, NIfTI name) and at the file's first bytes, not only at its extension, so DICOM
files without an extension work and a PNG misnamed ``.dcm`` gets a clear error.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from medgem.errors import ImageInputError
from medgem.inputs.dicom import (
    DicomSource,
    burned_in_warning,
    check_image_header,
    decode_frames,
    frame_count,
    frame_to_rgb,
    header_facts,
    looks_like_dicom,
    parses_as_dicom,
    read_header,
    study_date,
)
from medgem.inputs.nifti import is_nifti, read_nifti
from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.pdf import looks_like_pdf, read_pdf
from medgem.inputs.picture import read_picture
from medgem.inputs.series import Header, choose_series, folder_headers, group_series, zip_headers
from medgem.inputs.volume import multiframe_to_input, series_to_input, to_images

Reader = Callable[[Path, ImagingOptions], MedicalInput]

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}
# What the pictures Pillow reads start with (PNG, JPEG, GIF, BMP, TIFF, WebP's RIFF, ICO)
_PICTURE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"\x00\x00\x01\x00")


def read_dicom_file(path: Path, options: ImagingOptions) -> MedicalInput:
    """One DICOM file: one image, one chosen frame, or (multi-frame, no frame chosen) a volume."""
    source = DicomSource(name=path.name, path=path)
    ds = read_header(source, pixels=True, force=True)  # detect_format found it to be DICOM
    check_image_header(ds, path.name, options)
    frames = frame_count(ds)
    if frames > 1 and options.frame is None:
        return multiframe_to_input(ds, options, path.name)
    index = options.frame if frames > 1 else None
    if options.frame and frames == 1:  # not silently frame 0 when another was asked for
        raise ImageInputError(f"{path.name} has 1 frame; --frame {options.frame} does not exist",
                              "drop --frame, or use --frame 0")
    if index is not None and not 0 <= index < frames:
        raise ImageInputError(f"{path.name} has {frames} frames; --frame {index} does not exist",
                              f"use 0..{frames - 1}")
    pixels = decode_frames(ds, path.name, index)
    rgb, used = frame_to_rgb(ds, pixels, options, index or 0)
    facts = header_facts(ds)
    facts["window"] = used
    if index is not None:
        facts["frame"] = index
    modality = options.modality or facts.get("modality")
    rows, cols = rgb.shape[:2]
    unsaid = burned_in_warning(ds, options)
    return MedicalInput(
        kind="image",
        images=to_images(rgb[None]),
        modality=str(modality) if modality else None,
        study_date=study_date(ds),
        description=f"{modality or 'unknown'} image: {cols}x{rows}, {used}",
        source=path.name,
        metadata=facts,
        warnings=[unsaid] if unsaid else [],
    )


def read_chosen_series(headers: list[Header], options: ImagingOptions, where: str) -> MedicalInput:
    """A folder's or zip's DICOM headers (already read under the limits): the chosen series."""
    series = group_series(headers)
    chosen = choose_series(series, options.series, where)
    if len(chosen.members) == 1:
        source, ds = chosen.members[0]
        if frame_count(ds) > 1 and options.frame is None:
            return multiframe_to_input(read_header(source, pixels=True), options, where)
    return series_to_input(chosen, options, where, len(series))


def read_dicom_folder(path: Path, options: ImagingOptions) -> MedicalInput:
    """A folder of DICOM files (searched recursively): one series, sorted and sampled."""
    return read_chosen_series(folder_headers(path, options), options, path.name)


def read_dicom_zip(path: Path, options: ImagingOptions) -> MedicalInput:
    """A zip of DICOM files, streamed: headers first under the limits, then like a folder
    (only the sampled slices are inflated again to be decoded)."""
    return read_chosen_series(zip_headers(path, options), options, path.name)


def read_slide_lazily(path: Path, options: ImagingOptions) -> MedicalInput:
    """A whole-slide image (file, DICOM WSI folder or zip); see ``medgem.inputs.wsi``."""
    from medgem.inputs.wsi import read_slide

    return read_slide(path, options)


#: name -> reader; ``detect_format`` returns one of these names.
READERS: dict[str, Reader] = {
    "dicom": read_dicom_file,
    "dicom-folder": read_dicom_folder,
    "dicom-zip": read_dicom_zip,
    "nifti": read_nifti,
    "picture": read_picture,
    "slide": read_slide_lazily,
    "pdf": read_pdf,
}


def detect_format(path: Path) -> str:
    """Which reader handles ``path`` (which the caller has found to exist).

    Raises:
        ImageInputError: a ``.dcm`` file is not DICOM.
    """
    from medgem.inputs.slide_detect import is_dicom_wsi, is_slide_file

    if path.is_dir():
        return "slide" if is_dicom_wsi(path) else "dicom-folder"
    if is_nifti(path):
        return "nifti"
    with path.open("rb") as handle:
        head = handle.read(132)
    if not head:  # a failed copy or download, whatever its name
        raise ImageInputError(f"{path.name} is empty (0 bytes)", "copy the file again")
    if looks_like_dicom(head):
        return "dicom"
    if looks_like_pdf(head):
        return "pdf"
    if is_slide_file(path, head):
        return "slide"
    if path.suffix.lower() in DICOM_SUFFIXES:
        if parses_as_dicom(path):  # an old file without File Meta header
            return "dicom"
        raise ImageInputError(
            f"{path.name} is named like DICOM but is not a DICOM file (no 'DICM' marker at byte 128)",
            "check the file; if it is a PNG or JPEG, give it its real extension",
        )
    if zipfile.is_zipfile(path):
        return "slide" if is_dicom_wsi(path) else "dicom-zip"
    if head.startswith(b"PK\x03\x04") or path.suffix.lower() == ".zip":  # cut short: no directory
        raise ImageInputError(
            f"{path.name} is a damaged or incomplete zip (its table of contents at the end is missing)",
            "copy or download it again, or zip the folder again")
    if not head.startswith(_PICTURE_MAGIC) and parses_as_dicom(path):  # no File Meta, no .dcm name
        return "dicom"
    return "picture"
