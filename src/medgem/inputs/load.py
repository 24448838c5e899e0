"""The imaging layer's entry points: paths in, ``MedicalInput`` out."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medgem.inputs.options import ImagingOptions, MedicalInput
from medgem.inputs.readers import READERS, detect_format


def load_medical_input(path: str | Path, options: ImagingOptions | None = None) -> MedicalInput:
    """Read one image, DICOM file, DICOM folder, zip of DICOM files, or NIfTI volume into the
    RGB images the model gets plus PHI-free facts about them.

    Raises:
        ImageInputError: anything wrong with the input, with what to do about it (several series
            and no ``options.series`` lists them).
    """
    path = Path(path)
    return READERS[detect_format(path)](path, options or ImagingOptions())


def load_medical_inputs(paths: Iterable[str | Path], options: ImagingOptions | None = None
                        ) -> list[MedicalInput]:
    """Read several inputs, ordered by study date (oldest first) for longitudinal comparison;
    inputs without a date keep their given order, after the dated ones."""
    loaded = [load_medical_input(p, options) for p in paths]
    return sorted(loaded, key=lambda item: (item.study_date is None, item.study_date or ""))
