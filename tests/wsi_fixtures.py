"""Real slide and PDF files for the WSI/PDF tests and benchmark, written offline into tmp dirs.

Slides are tiled pyramidal TIFFs written with tifffile (Aperio-style or generic) and read back
through OpenSlide; PDFs are written by hand to the PDF 1.4 spec (text in Helvetica, one of the
14 standard fonts, so no font file is needed) and read through pdfium.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

#: A name planted on slide labels and in vendor metadata; it must appear in no output.
PLANTED_NAME = "DOE_JANE_QUINCY_MRN_99887766"
#: The label image is pure blue: no patch or overview may contain this colour.
LABEL_RGB = (0, 0, 255)
GLASS_RGB = (242, 240, 241)
TISSUE_RGB = (190, 90, 160)  # eosin-pink/haematoxylin-purple


def slide_pixels(cells: tuple[int, int], cell: int, tissue: Iterable[tuple[int, int]]) -> NDArray[np.uint8]:
    """Glass with stained tissue filling the given (col, row) grid cells of side ``cell`` px."""
    cols, rows = cells
    image = np.empty((rows * cell, cols * cell, 3), dtype=np.uint8)
    image[:] = GLASS_RGB
    rng = np.random.default_rng(7)
    for col, row in tissue:
        block = np.array(TISSUE_RGB, dtype=np.int16) + rng.integers(-15, 16, (cell, cell, 1))
        image[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = np.clip(block, 0, 255)
    return image


def _levels(image: NDArray[np.uint8], factors: Sequence[int]) -> list[NDArray[np.uint8]]:
    return [np.ascontiguousarray(image[::f, ::f]) for f in factors]


def write_aperio(path: Path, image: NDArray[np.uint8], mpp: float | None = 1.0,
                 factors: Sequence[int] = (1, 4, 16), label: bool = True,
                 compression: str = "jpeg") -> Path:
    """An Aperio-style SVS: tiled JPEG levels, description with MPP, a label with a name."""
    height, width = image.shape[:2]
    mpp_field = f"|MPP = {mpp}" if mpp is not None else ""
    description = (f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] "
                   f"(256x256) JPEG/RGB Q=80|AppMag = 10{mpp_field}|Filename = {PLANTED_NAME}"
                   f"|Patient = {PLANTED_NAME}")
    if mpp is None:
        description = description.replace("|AppMag = 10", "")
    with tifffile.TiffWriter(path) as tif:
        for number, level in enumerate(_levels(image, factors)):
            text = description if number == 0 else "Aperio Image Library v12.0.15\r\nlevel"
            tif.write(level, tile=(256, 256), compression=compression, photometric="rgb",
                      description=text, metadata=None)
        if label:
            label_image = np.empty((200, 300, 3), np.uint8)
            label_image[:] = LABEL_RGB
            tif.write(label_image, compression="lzw", photometric="rgb", subfiletype=1,
                      description=f"Aperio Image Library v12.0.15\r\nlabel 300x200|{PLANTED_NAME}",
                      metadata=None)
    return path


def write_generic(path: Path, image: NDArray[np.uint8], mpp: float = 1.0,
                  factors: Sequence[int] = (1, 4, 16)) -> Path:
    """A generic tiled pyramidal TIFF with its resolution in the TIFF resolution tags."""
    with tifffile.TiffWriter(path) as tif:
        for number, (factor, level) in enumerate(zip(factors, _levels(image, factors), strict=True)):
            per_cm = 10_000.0 / (mpp * factor)
            tif.write(level, tile=(256, 256), compression="zlib", photometric="rgb",
                      subfiletype=0 if number == 0 else 1, resolution=(per_cm, per_cm),
                      resolutionunit="CENTIMETER", metadata=None)
    return path


def write_flat_tiff_header(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A stripped (non-tiled, one level) RGB TIFF header claiming ``width`` x ``height``.

    Only the header and one strip entry are written: the pixels the header claims (7.5 GB for
    50k x 50k) never exist, so a reader that tried to decode them would fail, not allocate.
    """
    entries = [  # (tag, type, count, value): type 3 = SHORT, 4 = LONG
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, 0), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, height),
        (279, 4, 1, width * height * 3 & 0xFFFFFFFF), (284, 3, 1, 1),
    ]
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    data_offset = bits_offset + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_offset
        if tag == 273:
            value = data_offset
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + b"\xf0" * 64
    path.write_bytes(bytes(out))
    return path


def corrupt_tile(path: Path, tile: int, level: int = 0) -> Path:
    """End one JPEG tile early: an EOI marker and zeros in its middle (the file stays a TIFF)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    data = bytearray(path.read_bytes())
    for offset, count in spans[tile:tile + 1]:
        start = offset + count // 2
        data[start:start + 8] = b"\xff\xd9\xff\xd9\x00\x00\x00\x00"
    path.write_bytes(bytes(data))
    return path


def _pdf(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R ".encode() + trailer_extra
            + f">>\nstartxref\n{xref}\n%%EOF\n".encode())
    return bytes(out)


def write_pdf(path: Path, pages: Sequence[str], *, title: str = PLANTED_NAME) -> Path:
    """A text PDF, one A4 page per string (drawn large at the top), with a PHI-bearing title."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for text in pages:
        page_number = len(objects) + 1
        stream = f"BT /F1 36 Tf 60 760 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources "
                       f"<< /Font << /F1 3 0 R >> >> /Contents {page_number + 1} 0 R >>".encode())
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream
                       + b"\nendstream")
    objects.append(f"<< /Title ({title}) /Author ({title}) >>".encode())
    path.write_bytes(_pdf(objects, f"/Info {len(objects)} 0 R ".encode()))
    return path


def write_encrypted_pdf(path: Path) -> Path:
    """A one-page PDF whose standard security handler wants a user password nobody knows."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
               b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 "
               b"/O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> >>"]
    path.write_bytes(_pdf(objects, b"/Encrypt 4 0 R /ID [<" + b"33" * 16 + b"> <" + b"33" * 16
                          + b">] "))
    return path


WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


#: Transfer syntaxes of the codecs the DICOM WSI fixture writes.
_SYNTAX = {"none": "1.2.840.10008.1.2.1", "jpeg": "1.2.840.10008.1.2.4.50", "jpeg2000": "1.2.840.10008.1.2.4.90"}


def _encoded_frames(frames: list[NDArray[np.uint8]], codec: str) -> list[bytes]:
    """Frames encoded by Pillow: JPEG baseline (4:2:2, quality 90) or lossless JPEG 2000
    codestreams (no colour transform, so the photometric stays RGB)."""
    import io

    from PIL import Image

    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        if codec == "jpeg":
            Image.fromarray(frame).save(buffer, format="JPEG", quality=90, subsampling=1)
        else:
            Image.fromarray(frame).save(buffer, format="JPEG2000", no_jp2=True, mct=0)
        encoded.append(buffer.getvalue())
    return encoded


def _dicom_wsi_instance(path: Path, image: NDArray[np.uint8], mpp: float, uids: tuple[str, str, str],
                        number: int, flavor: str, tile: int = 256, codec: str = "none") -> None:
    """One TILED_FULL VL Whole Slide Microscopy instance (uncompressed RGB frames, or JPEG
    baseline or JPEG 2000 ones encoded by Pillow), via pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    height, width = image.shape[:2]
    frames = []
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            frame = np.full((tile, tile, 3), 255, np.uint8)
            part = image[ty:ty + tile, tx:tx + tile]
            frame[:part.shape[0], :part.shape[1]] = part
            frames.append(frame)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = _SYNTAX[codec]
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.Modality, ds.PatientName, ds.PatientID = "SM", PLANTED_NAME, "MRN-99887766"
    ds.ContainerIdentifier, ds.FocusMethod, ds.ExtendedDepthOfField = PLANTED_NAME[:16], "AUTO", "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * mpp / 1000, height * mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]
    measures.SliceThickness = measures.SpacingBetweenSlices = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    illumination, colour, optical = Dataset(), Dataset(), Dataset()
    illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
    illumination.CodeMeaning = "Brightfield illumination"
    colour.CodeValue, colour.CodingSchemeDesignator, colour.CodeMeaning = "414298005", "SCT", "Full Spectrum"
    optical.OpticalPathIdentifier = "1"
    optical.IlluminationTypeCodeSequence, optical.IlluminationColorCodeSequence = [illumination], [colour]
    ds.OpticalPathSequence = [optical]
    if codec != "none":
        from pydicom.encaps import encapsulate

        if codec == "jpeg":
            ds.PhotometricInterpretation, ds.LossyImageCompression = "YBR_FULL_422", "01"
            ds.LossyImageCompressionMethod, ds.LossyImageCompressionRatio = "ISO_10918_1", 10
        ds.PixelData = encapsulate(_encoded_frames(frames, codec))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_dicom_wsi(folder: Path, image: NDArray[np.uint8], mpp: float = 4.0,
                    factors: Sequence[int] = (1, 4), codec: str = "none") -> Path:
    """A DICOM WSI folder: one instance per pyramid level plus a label (pure blue) instance.

    Written with pydicom to the VL Whole Slide Microscopy IOD (TILED_FULL; levels uncompressed,
    or ``codec`` "jpeg" or "jpeg2000") and read back through wsidicom; patient name and container
    ID carry the planted name.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uids = (generate_uid(), generate_uid(), generate_uid())
    for number, (factor, level) in enumerate(zip(factors, _levels(image, factors), strict=True), 1):
        _dicom_wsi_instance(folder / f"level{number}.dcm", level, mpp * factor, uids, number, "VOLUME",
                            codec=codec)
    label = np.empty((128, 256, 3), np.uint8)
    label[:] = LABEL_RGB
    _dicom_wsi_instance(folder / "label.dcm", label, 0.1, uids, len(factors) + 1, "LABEL", tile=256)
    return folder


def write_subifd(path: Path, image: NDArray[np.uint8], mpp: float = 1.0,
                 factors: Sequence[int] = (1, 4, 16)) -> Path:
    """A plain (not OME) tiled TIFF whose reduced levels are SubIFDs of the first page, as
    ``vips tiffsave --subifd`` writes: resolution in the TIFF tags, one top-level IFD."""
    levels = _levels(image, factors)
    per_cm = [10_000.0 / (mpp * factor) for factor in factors]
    with tifffile.TiffWriter(path, ome=False) as tif:
        tif.write(levels[0], tile=(256, 256), subifds=len(levels) - 1, photometric="rgb", compression="zlib",
                  resolution=(per_cm[0], per_cm[0]), resolutionunit="CENTIMETER", metadata=None)
        for level, resolution in zip(levels[1:], per_cm[1:], strict=True):
            tif.write(level, tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib",
                      resolution=(resolution, resolution), resolutionunit="CENTIMETER", metadata=None)
    return path


def write_ome(path: Path, image: NDArray[np.uint8], mpp: float = 1.0,
              factors: Sequence[int] = (1, 4, 16)) -> Path:
    """An OME-TIFF: pixel size in the OME-XML, reduced levels in SubIFDs (OpenSlide sees only one)."""
    levels = _levels(image, factors)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(levels[0], tile=(256, 256), subifds=len(levels) - 1, photometric="rgb",
                  compression="zlib", metadata={"PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                                                "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm",
                                                "Name": PLANTED_NAME})
        for level in levels[1:]:
            tif.write(level, tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib")
    return path
