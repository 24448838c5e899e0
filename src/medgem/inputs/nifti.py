"""NIfTI volumes (.nii, .nii.gz) through nibabel: reoriented to RAS, shown as axial slices.

NIfTI carries no modality; ``ImagingOptions.modality`` says it, else values reaching air in
Hounsfield units (below -500) are taken as CT and anything else is min-max scaled like MR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medgem.errors import ImageInputError, require
from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.volume import array_to_input

#: Values this low only occur in HU data (air is -1000 HU); MR intensities are non-negative.
CT_GUESS_THRESHOLD = -500.0


def is_nifti(path: Path) -> bool:
    """Whether the file name says NIfTI."""
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def axial_slices(data: NDArray[Any]) -> NDArray[Any]:
    """(X, Y, Z) in RAS -> (Z, Y, X) slices displayed radiologically (anterior up, right on left)."""
    return np.flip(np.transpose(data, (2, 1, 0)), axis=(1, 2))


def guess_modality(values: NDArray[Any]) -> str:
    """"CT" when values reach air in HU, else "MR" (min-max display)."""
    return "CT" if float(np.min(values)) < CT_GUESS_THRESHOLD else "MR"


def read_nifti(path: Path, options: ImagingOptions) -> MedicalInput:
    """Load a NIfTI file as a volume of axial slices.

    Raises:
        ImageInputError: unreadable file, not 3-D/4-D, or too large.
    """
    nib: Any = require("nibabel", "imaging", "Reading NIfTI volumes")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise ImageInputError(f"{path.name} is not a readable NIfTI file ({exc})",
                              "check the file or re-export it") from exc
    if len(shape) not in (3, 4):
        raise ImageInputError(f"{path.name} is {len(shape)}-D; a 3-D volume was expected",
                              "export one 3-D volume")
    x, y, z = shape[:3]
    if x * y > options.max_pixels or x * y * z > options.max_total_pixels or z > options.slice_limit:
        raise ImageInputError(
            f"{path.name} declares {x}x{y}x{z} voxels, over the size or slice limits",
            "crop or resample the volume, or raise the limits",
        )
    try:
        img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ImageInputError(f"{path.name} has truncated or corrupt voxel data ({exc})",
                              "copy the file again") from exc
    volumes = int(data.shape[3]) if data.ndim == 4 else 1
    notes: list[str] = []
    index = options.frame or 0
    if not 0 <= index < volumes:
        raise ImageInputError(f"{path.name} has {volumes} volume(s); --frame {index} does not exist",
                              f"use 0..{volumes - 1}")
    if data.ndim == 4:  # a time series (fMRI, DCE, DWI): one of its 3-D volumes is sent
        data = data[..., index]
        notes.append(f"{path.name} is 4-D: volume {index} of {volumes} is sent"
                     + ("" if volumes == 1 else f" (--frame N picks another, 0..{volumes - 1})"))
    volume = axial_slices(data.astype(np.float32, copy=False))
    modality = (options.modality or "").upper() or guess_modality(volume)
    zooms = [round(float(v), 4) for v in img.header.get_zooms()[:3]]
    facts: dict[str, object] = {
        "format": "NIfTI", "voxel_size_mm": zooms, "modality_guessed": options.modality is None,
    }
    if len(shape) == 4:
        facts["volumes"] = volumes
    prepared = array_to_input(volume, modality, options, path.name, facts)
    prepared.warnings.extend(notes)
    return prepared
