"""Medical inputs -> the RGB images MedGemma gets, plus PHI-free facts about them.

No model code lives here. Entry points::

    from medgem.imaging import load_medical_input, load_medical_inputs, ImagingOptions
    item = load_medical_input("study/", ImagingOptions(series="1.2.3"))
    save_preprocessed([item], "preview/")
"""

from __future__ import annotations

from medgem.imaging.load import load_medical_input, load_medical_inputs
from medgem.imaging.options import DEFAULT_CT_WINDOWS, ImagingOptions, MedicalInput
from medgem.imaging.preview import encode_image, save_preprocessed, to_model_size

__all__ = [
    "DEFAULT_CT_WINDOWS",
    "ImagingOptions",
    "MedicalInput",
    "encode_image",
    "load_medical_input",
    "load_medical_inputs",
    "save_preprocessed",
    "to_model_size",
]
