"""Synthetic DICOM builders for the imaging tests and benchmark (written into tmp dirs, never committed).

Every builder writes real DICOM Part 10 files through pydicom, so the code under test reads them
exactly as it reads files from a scanner.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

#: Identifying values planted in synthetic files; none may appear in anything medgem writes.
PHI: dict[str, str] = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19510417",
    "AccessionNumber": "ACC-5544332",
    "InstitutionName": "Saint Elsewhere General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20230314",
    "SeriesDate": "20230314",
    "AcquisitionDate": "20230314",
    "StudyTime": "101112",
    "StudyID": "STUDY-7788",
    "OperatorsName": "Tech^Tina",
    "StationName": "CT-ROOM-ZETA",
}

#: Known Hounsfield values and their MedGemma RGB (red -1024..1024, green -135..215, blue 0..80),
#: computed by hand with the notebook's arithmetic ((hu - low) / (high - low) * 255, truncated):
#:   air   -1000: red 24/2048*255 = 2.99 -> 2;   green clipped -> 0;   blue clipped -> 0
#:   water     0: red 1024/2048*255 = 127.5 -> 127; green 135/350*255 = 98.36 -> 98; blue 0
#:   fat    -100: red 924/2048*255 = 115.05 -> 115; green 35/350*255 = 25.5 -> 25; blue 0
#:   tissue   40: red 1064/2048*255 = 132.48 -> 132; green 175/350*255 = 127.5 -> 127; blue 127
#:   bone   1000: red 2024/2048*255 = 252.01 -> 252; green clipped -> 255; blue clipped -> 255
KNOWN_HU_RGB: dict[int, tuple[int, int, int]] = {
    -1000: (2, 0, 0),
    -100: (115, 25, 0),
    0: (127, 98, 0),
    40: (132, 127, 127),
    1000: (252, 255, 255),
}


def base_dataset(
    *,
    sop_class: str,
    modality: str,
    series_uid: str,
    study_uid: str,
    phi: bool = True,
) -> Dataset:
    """A minimal image dataset with file meta, patient/study identifiers and UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    if phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
    return ds


def grey_pixels(ds: Dataset, stored: NDArray[np.integer], signed: bool, bits: int = 16) -> None:
    """Attach grey stored values (H, W) as MONOCHROME2 pixel data."""
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]
    array = np.ascontiguousarray(stored.astype(dtype))
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = array.tobytes()


def ct_slice(
    hu: NDArray[np.floating] | NDArray[np.integer],
    *,
    instance: int | None,
    z: float,
    series_uid: str,
    study_uid: str,
    slope: float = 1.0,
    intercept: float = -1024.0,
    phi: bool = True,
) -> Dataset:
    """One CT slice storing ``hu`` through rescale slope/intercept (unsigned when it fits)."""
    ds = base_dataset(sop_class=CTImageStorage, modality="CT", series_uid=series_uid, study_uid=study_uid,
                      phi=phi)
    stored = np.round((np.asarray(hu, dtype=np.float64) - intercept) / slope).astype(np.int64)
    signed = bool(stored.min() < 0)
    grey_pixels(ds, stored, signed)
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "HU"
    if instance is not None:
        ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = "2.5"
    ds.SeriesNumber = 2
    ds.SeriesDescription = "AXIAL 2.5"
    return ds


def write_ct_series(
    folder: Path,
    volume: NDArray[np.floating] | NDArray[np.integer],
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    scramble: bool = True,
    instance_numbers: bool = True,
    slope: float = 1.0,
    intercept: float = -1024.0,
    phi: bool = True,
    extension: str = ".dcm",
) -> list[Path]:
    """Write an (S, H, W) HU volume as S CT files, file names in scrambled order by default.

    Returns:
        The paths, in slice order (instance 1 first).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    count = volume.shape[0]
    names = np.random.default_rng(7).permutation(count) if scramble else np.arange(count)
    paths = []
    for index in range(count):
        ds = ct_slice(volume[index], instance=index + 1 if instance_numbers else None, z=2.5 * index,
                      series_uid=series_uid, study_uid=study_uid, slope=slope, intercept=intercept,
                      phi=phi)
        path = folder / f"IM{int(names[index]):04d}{extension}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def mr_slice(values: NDArray[np.integer], *, instance: int, series_uid: str, study_uid: str) -> Dataset:
    """One MR slice of raw stored values (no rescale)."""
    ds = base_dataset(sop_class=MRImageStorage, modality="MR", series_uid=series_uid, study_uid=study_uid)
    grey_pixels(ds, values, signed=False)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(instance)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SeriesNumber = 5
    return ds


def secondary_capture(stored: NDArray[np.integer], *, photometric: str = "MONOCHROME2", bits: int = 16,
                      modality: str = "OT") -> Dataset:
    """A single grey secondary-capture image with the given photometric interpretation."""
    ds = base_dataset(sop_class=SecondaryCaptureImageStorage, modality=modality,
                      series_uid=generate_uid(), study_uid=generate_uid())
    grey_pixels(ds, stored, signed=False, bits=bits)
    ds.PhotometricInterpretation = photometric
    return ds


def hu_phantom(rows: int = 16, cols: int = 20, values: Sequence[int] = (-1000, -100, 0, 40, 1000)) -> NDArray[np.int64]:
    """A (rows, cols) slice split into vertical bands, one per HU value, left to right."""
    band = np.array_split(np.arange(cols), len(values))
    image = np.zeros((rows, cols), dtype=np.int64)
    for value, columns in zip(values, band, strict=True):
        image[:, columns] = value
    return image
