"""One DICOM file -> display pixels: safe reading, decoding, modality LUT, VOI, MONOCHROME1, colour.

Reading is split in two so series can be grouped from headers alone: ``read_header`` parses up to
the pixel data; ``decode_frames`` decodes only the frames that will be shown. Every failure becomes
one ``ImageInputError`` saying what is wrong with which file and what to do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from medgem.errors import ImageInputError, NotAnImageError, require
from medgem.inputs.options import ImagingOptions, raise_hint
from medgem.inputs.windows import ct_to_rgb, grey_to_rgb, minmax_to_uint8, window_to_uint8

#: Which PyPI package decodes which compressed transfer syntax (by UID prefix).
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg",  # JPEG baseline / extended (.50, .51)
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg",  # JPEG-LS (.80, .81)
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg",  # JPEG 2000 (.90, .91)
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE lossless
}


#: PyPI package of each pydicom pixel-decoder plugin (pylibjpeg's depends on the syntax).
PLUGIN_PACKAGES: dict[str, str] = {"gdcm": "python-gdcm", "pillow": "pillow", "pyjpegls": "pyjpegls"}

#: DICOM objects that carry pixel data but are not pictures of a patient: refused unless forced.
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT dose grid (RTDOSE)",
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation mask (SEG)",
    "1.2.840.10008.5.1.4.1.1.66.7": "a label-map segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.30": "a parametric map",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT structure set",
}
NON_IMAGE_MODALITIES: dict[str, str] = {
    "RTDOSE": "an RT dose grid (RTDOSE)", "SEG": "a segmentation mask (SEG)",
    "RTSTRUCT": "an RT structure set", "REG": "a registration", "RWV": "real-world value maps",
}


@dataclass(frozen=True)
class DicomSource:
    """Where one DICOM file's bytes live: ``path`` on disk, ``member`` of the zip at ``path``,
    or ``data`` in memory. ``name`` is what users see (the file name inside a folder or zip;
    never a full path)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    member: str | None = None

    def open(self) -> IO[bytes]:
        """Open the bytes for reading (a zip member is inflated into memory: one file)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        if self.member is not None:
            import zipfile

            with zipfile.ZipFile(self.path) as archive:
                return io.BytesIO(archive.read(self.member))
        return self.path.open("rb")


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file's first 132 bytes look like DICOM: the 'DICM' marker at byte 128, or (old
    files without a preamble) a first element in group 0x0008 or 0x0002, little endian."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00"


def _pixels() -> Any:
    return require("pydicom.pixels", "imaging", "Decoding DICOM pixel data", "pydicom")


def parses_as_dicom(path: Path) -> bool:
    """Whether a file without the 'DICM' marker still holds a DICOM data set (an old file with
    no File Meta header, starting at any group, either byte order): pydicom, forced, finds the
    elements an object has (SOP class, modality, or image rows)."""
    pydicom: Any = require("pydicom", "imaging", "Reading DICOM files")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # anything that is not DICOM may fail in any way here
        return False
    return any(key in ds for key in ("SOPClassUID", "Modality", "Rows"))


def read_header(source: DicomSource, *, pixels: bool = False, handle: IO[bytes] | None = None,
                force: bool = False) -> Any:
    """Parse a DICOM file into a pydicom ``Dataset``, stopping before the pixel data unless
    ``pixels`` (then the still-encoded pixel data is read too). ``handle``: an already open
    stream of the source's bytes (a zip member being scanned), read instead of opening it.
    ``force``: the caller found the file to be DICOM (:func:`parses_as_dicom`), so a file
    without File Meta header is parsed whatever its first element.

    Raises:
        ImageInputError: not a DICOM file, or a file too damaged to parse.
    """
    pydicom: Any = require("pydicom", "imaging", "Reading DICOM files")
    try:
        with handle if handle is not None else source.open() as stream:
            head = stream.read(132)
            stream.seek(0)
            # Old files without a preamble are parsed only when their first element looks DICOM
            # (or the caller found them to be).
            forced = head[128:132] != b"DICM" and (force or looks_like_dicom(head))
            ds = pydicom.dcmread(stream, stop_before_pixels=not pixels, force=forced)
    except pydicom.errors.InvalidDicomError as exc:
        raise ImageInputError(
            f"{source.name} is not a DICOM file (no 'DICM' marker at byte 128)",
            "check that it is the file you meant; a PNG or JPEG needs its real extension",
        ) from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageInputError(
            f"{source.name} is damaged or truncated and could not be parsed ({exc})",
            "copy the file again from the archive or PACS",
        ) from exc
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # No file meta (old files): record the encoding pydicom found, so the pixels decode.
        implicit, little = ds.original_encoding
        uid = pydicom.uid
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            uid.ImplicitVRLittleEndian if implicit else
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
        )
    return ds


#: The elements that hold an image's pixels (integer, float and double-float pixel data).
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_pixel_data(ds: Any) -> bool:
    """Whether the dataset holds pixel data (of any of the three kinds)."""
    return any(keyword in ds for keyword in PIXEL_KEYWORDS)


def has_pixels(ds: Any) -> bool:
    """Whether the dataset declares an image (pixel data present or dimensions in the header)."""
    return has_pixel_data(ds) or ("Rows" in ds and "Columns" in ds)


def without_pixels(ds: Any) -> Any:
    """The same elements as ``ds``, less the pixels (``ds`` stays whole): what a report back
    needs of a source instance, kept in memory only."""
    import pydicom

    header = pydicom.Dataset()
    for element in ds:
        if element.keyword not in PIXEL_KEYWORDS:
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    return header


def header_text(ds: Any, name: str) -> str:
    """A header attribute as text, stripped; "" when absent or empty."""
    value = ds.get(name)
    return str(value).strip() if value not in (None, "") else ""


def header_int(ds: Any, name: str) -> int | None:
    """A header attribute as a whole number; None when absent, empty or not a number."""
    try:
        value = ds.get(name)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def header_values(ds: Any, name: str) -> list[str]:
    """A multi-valued attribute (``ModalitiesInStudy``, ``ImageType``) as a list of text, one
    entry for a single value, [] when absent or empty."""
    value = ds.get(name) or []
    return [str(value)] if isinstance(value, str) else [str(item) for item in value]


def frame_count(ds: Any) -> int:
    """Number of frames the dataset declares (1 when NumberOfFrames is absent, empty or not a
    positive number)."""
    return max(1, header_int(ds, "NumberOfFrames") or 1)


def non_image_kind(ds: Any) -> str | None:
    """What a DICOM object with pixel data but no picture is ("an RT dose grid (RTDOSE)",
    "a segmentation mask (SEG)", ...), or None for images."""
    sop = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    return NON_IMAGE_SOP_CLASSES.get(sop) or NON_IMAGE_MODALITIES.get(modality)


def burned_in(ds: Any) -> bool:
    """Whether the header declares text burned into the pixels (Burned In Annotation = YES)."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


#: Modalities whose images often carry text burned into the pixels (ultrasound machines,
#: screen captures, angiography): without a Burned In Annotation tag, the user is warned.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XA"})


def burned_in_warning(ds: Any, options: ImagingOptions) -> str | None:
    """A warning for an image of a modality known to carry burned-in text whose header does
    not say whether it does (no Burned In Annotation), unless ``options.allow_burned_in``."""
    modality = str(ds.get("Modality", "") or "").upper()
    if options.allow_burned_in or "BurnedInAnnotation" in ds or modality not in BURNED_IN_MODALITIES:
        return None
    return (f"{modality} images often carry text burned into the pixels (names, dates, IDs) and "
            "this file does not say whether it does (no Burned In Annotation): check the images "
            "before sharing answers, or pass --allow-burned-in to accept it")


def check_image_header(ds: Any, name: str, options: ImagingOptions) -> None:
    """Refuse headers without an image, non-image objects (dose grids, masks) unless forced,
    burned-in annotation unless allowed, and more pixels than the limits allow.

    Raises:
        NotAnImageError: no pixel data, or a non-image object not forced.
        ImageInputError: burned-in annotation, a decompression bomb, or too many frames.
    """
    if not has_pixels(ds):
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "non-image"
        raise NotAnImageError(
            f"{name} holds no pixel data (a {sop} object, or a truncated file)",
            "pass an image DICOM (CT, MR, CR, DX, ...) instead",
        )
    kind = non_image_kind(ds)
    if kind is not None and not options.allow_non_image:
        raise NotAnImageError(
            f"{name} is {kind}, not an image of the patient; MedGemma was trained on images "
            f"(CT, MR, X-ray, ultrasound, photographs)",
            "pass an image instead, or force it with --allow-non-image "
            "(ImagingOptions.allow_non_image) to send its frames as grey images",
        )
    if burned_in(ds) and not options.allow_burned_in:
        raise ImageInputError(
            f"{name} declares Burned In Annotation = YES: text such as the patient's name may be "
            f"burned into its pixels, which de-identification cannot remove",
            "mask the text first, or allow it with --allow-burned-in "
            "(ImagingOptions.allow_burned_in) when the images may carry it",
        )
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or cols < 1:
        raise ImageInputError(f"{name} declares an empty image ({rows}x{cols})", "check the file")
    if rows * cols > options.max_pixels:
        raise ImageInputError(
            f"{name} declares a {cols}x{rows} image ({rows * cols:,} pixels), over the "
            f"limit of {options.max_pixels:,} (possible decompression bomb)",
            raise_hint("max_pixels"),
        )
    frames = frame_count(ds)
    if frames > options.slice_limit:
        raise ImageInputError(
            f"{name} declares {frames} frames, over the limit of {options.slice_limit}",
            f"pick one frame with --frame, or {raise_hint('slice_limit')}",
        )
    if frames * rows * cols > options.max_total_pixels:
        raise ImageInputError(
            f"{name} declares {frames} frames of {cols}x{rows}, over the limit of "
            f"{options.max_total_pixels:,} pixels (possible decompression bomb)",
            f"pick one frame with --frame, or {raise_hint('max_total_pixels')}",
        )


def decoder_package(transfer_syntax: str) -> str | None:
    """The PyPI package that decodes ``transfer_syntax``, or None when numpy alone suffices."""
    return next((package for prefix, package in DECODER_PACKAGES.items()
                 if transfer_syntax.startswith(prefix)), None)


def missing_decoder(syntax: str, failure: str = "") -> tuple[str, str]:
    """Which decoder is really missing for ``syntax``: pydicom's view of the plugins that are
    installed (and failed) and those whose package is absent. Returns (problem, hint).

    The installed plugins are named with their own reasons (a 12-bit JPEG Extended file that
    pylibjpeg-libjpeg rejects and Pillow cannot read at 12 bits needs imagecodecs, which
    :func:`decode_frames` tries next; GDCM refuses 12-bit JPEG too).
    """
    try:
        from pydicom.pixels.decoders.base import get_decoder

        decoder = get_decoder(syntax)
        tried = list(decoder.available_plugins)
        absent = [entry.split(" - ")[0].strip() for entry in decoder.missing_dependencies]
    except (ImportError, NotImplementedError, ValueError):
        tried, absent = [], []
    # pylibjpeg's own plugin package depends on the syntax
    named = {**PLUGIN_PACKAGES, "pylibjpeg": f"pylibjpeg {decoder_package(syntax) or ''}".strip()}
    packages = [named[plugin] for plugin in absent if plugin in named]
    reasons = [line.strip() for line in failure.splitlines()[1:] if ":" in line]
    if tried:
        problem = (f"the installed decoders ({', '.join(tried)}) could not read it: "
                   f"{'; '.join(reasons) or failure.strip()}")
    else:
        problem = "no installed decoder can read it"
    if packages:
        hint = (f"install a decoder that is missing: pip install {packages[0]}"
                + (f" (or {', '.join(packages[1:])})" if len(packages) > 1 else ""))
    else:
        hint = "convert the file to an uncompressed transfer syntax (e.g. with gdcmconv --raw)"
    return problem, hint


def decode_frames(ds: Any, name: str, index: int | None = None) -> NDArray[Any]:
    """Decode pixel data: all frames (F, H, W[, 3]) or, with ``index``, one frame (H, W[, 3]).

    Colour data comes back as RGB (pydicom converts YBR). Single-frame files give (H, W[, 3]).

    Raises:
        ImageInputError: a missing decoder (naming the package), truncated or corrupt pixel data.
    """
    pixels = _pixels()
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "") or "")
    try:
        array = pixels.pixel_array(ds, index=index)  # type: ignore[attr-defined]
    except (RuntimeError, NotImplementedError) as exc:
        fallback = _jpeg_extended_frames(ds, index) if syntax == JPEG_EXTENDED else None
        if fallback is not None:
            return fallback
        syntax_name = getattr(getattr(ds, "file_meta", {}).get("TransferSyntaxUID"), "name", syntax)
        problem, hint = missing_decoder(syntax, str(exc))
        if syntax == JPEG_EXTENDED and int(ds.get("BitsStored", 8) or 8) > 8:
            hint = "install imagecodecs (pip install 'medgem[imaging]'), which decodes 12-bit JPEG Extended"
        raise ImageInputError(
            f"{name} uses {syntax_name or 'an unknown transfer syntax'} "
            f"(bits stored {ds.get('BitsStored', '?')}), and {problem}", hint,
        ) from exc
    except (ValueError, EOFError, OSError, IndexError, AttributeError) as exc:
        raise ImageInputError(
            f"{name} has truncated or corrupt pixel data ({exc})",
            "copy the file again from the archive or PACS",
        ) from exc
    return np.asarray(array)


JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # JPEG Extended (Process 2 and 4): 12-bit lossy


def _jpeg_extended_frames(ds: Any, index: int | None) -> NDArray[Any] | None:
    """12-bit JPEG Extended grey frames that pydicom's plugins refuse (libjpeg rejects some
    encoders' scan headers, Pillow and GDCM take no 12-bit JPEG), decoded by imagecodecs'
    libjpeg-turbo: (F, H, W), or (H, W) for one frame. None when it is not that case (colour,
    signed, imagecodecs missing) or imagecodecs cannot read it either."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    try:
        import imagecodecs
        from pydicom.encaps import generate_frames
    except ImportError:
        return None
    frames = frame_count(ds)
    try:
        decoded = [np.asarray(imagecodecs.jpeg8_decode(data)) for number, data in
                   enumerate(generate_frames(ds.PixelData, number_of_frames=frames))
                   if index is None or number == index]
    except Exception:  # imagecodecs.JpegError and the like: report pydicom's own error
        return None
    if not decoded or any(frame.ndim != 2 for frame in decoded):
        return None
    stack = np.stack(decoded).astype(np.uint16)
    return stack[0] if index is not None or frames == 1 else stack


def _functional_group_rescale(ds: Any, index: int) -> tuple[float, float] | None:
    """Slope/intercept of an enhanced multi-frame image (per-frame, else shared group)."""
    for key, item_index in (("PerFrameFunctionalGroupsSequence", index),
                            ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(key)
        if not groups or item_index >= len(groups):
            continue
        transform = groups[item_index].get("PixelValueTransformationSequence")
        if transform:
            item = transform[0]
            return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
    return None


def modality_values(ds: Any, array: NDArray[Any], index: int = 0) -> NDArray[np.float32]:
    """Apply the modality LUT or rescale slope/intercept (HU for CT) to one frame (H, W) of
    stored values, as float32; ``index`` picks an enhanced multi-frame file's per-frame values."""
    group = _functional_group_rescale(ds, index)
    if group is not None and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        slope, intercept = group
        return array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    out = _pixels().apply_modality_lut(array, ds)  # type: ignore[attr-defined]
    return np.asarray(out, dtype=np.float32)


def colour_to_rgb8(ds: Any, array: NDArray[Any]) -> NDArray[np.uint8]:
    """Turn a colour frame (RGB after pydicom's YBR conversion, or PALETTE COLOR) into RGB uint8."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        array = np.asarray(_pixels().apply_color_lut(array, ds))  # type: ignore[attr-defined]
        bits = 16 if array.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if array.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(array)
    return window_to_uint8(array, 0.0, float(2**bits - 1))


def grey_display(ds: Any, values: NDArray[np.float32], options: ImagingOptions
                 ) -> tuple[NDArray[np.uint8], str]:
    """Window one grey frame of modality values into RGB (H, W, 3), with a short name of the
    window used; MONOCHROME1 comes out inverted.

    Order of choice: the ``options.window`` override; for CT, MedGemma's three HU windows; the
    file's VOI LUT or window centre/width (through pydicom, then stretched to 0..255); otherwise
    the frame's full range.
    """
    override = options.window_range
    if override is not None:
        grey, used = window_to_uint8(values, *override), f"window {override[0]:g}..{override[1]:g}"
    elif str(ds.get("Modality", "")).upper() == "CT":
        return ct_to_rgb(values, options.ct_windows), "ct 3 windows"
    elif "VOILUTSequence" in ds or "WindowCenter" in ds:
        # A VOI LUT indexes by stored integer value; hand pydicom integers when the values are.
        source = values.astype(np.int64) if np.array_equal(values, np.trunc(values)) else values
        voi = np.asarray(_pixels().apply_voi_lut(source, ds), dtype=np.float32)  # type: ignore[attr-defined]
        grey, used = minmax_to_uint8(voi), "voi lut" if "VOILUTSequence" in ds else "file window"
    else:
        grey, used = minmax_to_uint8(values), "full range"
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey
    return grey_to_rgb(grey), used


def is_colour(ds: Any) -> bool:
    """Whether the dataset holds colour pixels (RGB, YBR, palette)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    return int(ds.get("SamplesPerPixel") or 1) > 1 or photometric == "PALETTE COLOR"


def frame_to_rgb(ds: Any, frame: NDArray[Any], options: ImagingOptions, index: int = 0
                 ) -> tuple[NDArray[np.uint8], str]:
    """One decoded frame -> display RGB (H, W, 3) and the window used."""
    if is_colour(ds):
        return colour_to_rgb8(ds, frame), "colour"
    return grey_display(ds, modality_values(ds, frame, index), options)


def study_date(ds: Any) -> str | None:
    """StudyDate (else SeriesDate, AcquisitionDate) as ISO YYYY-MM-DD, or None."""
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        value = str(ds.get(key, "") or "").strip()
        if len(value) == 8 and value.isdigit():
            return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def _floats(value: Any) -> list[float] | float | None:
    if value in (None, ""):
        return None
    try:
        if not isinstance(value, str) and hasattr(value, "__iter__"):
            numbers = [round(float(v), 4) for v in value]
            return numbers if any(numbers) else None  # "0\\0" means unknown, not zero
        return round(float(value), 4) or None
    except (TypeError, ValueError):
        return None


def header_facts(ds: Any) -> dict[str, object]:
    """Technical facts about an image, none of them identifying (no names, IDs, dates, UIDs)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    facts: dict[str, object] = {
        "modality": str(ds.get("Modality", "") or "") or None, "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0), "frames": frame_count(ds),
        "photometric": str(ds.get("PhotometricInterpretation", "") or "") or None,
        "bits_stored": int(ds.get("BitsStored") or 0) or None,
        "transfer_syntax": getattr(syntax, "name", None) or (str(syntax) if syntax else None),
        "pixel_spacing_mm": _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")),
        "slice_thickness_mm": _floats(ds.get("SliceThickness")),
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
    }
    return {k: v for k, v in facts.items() if v is not None}
