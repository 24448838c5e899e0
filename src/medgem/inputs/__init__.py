"""The inputs stage, the one front door: paths, uploads, data URLs and PIL images -> the RGB
images MedGemma gets, plus PHI-free facts about them. No model code lives here.

``front.py`` is what every surface calls (read_images, images_from_bytes, load_inputs,
decode_data_url, deidentify_upload); ``readers.py`` is the table of readers behind it (DICOM
file/folder/zip, NIfTI, pictures), with windows, series, volumes and de-identification
beside it. Lower-level entry points::

    from medgem.inputs import load_medical_input, ImagingOptions, save_preprocessed
    item = load_medical_input("study/", ImagingOptions(series="1.2.3"))
    save_preprocessed([item], "preview/")
"""

from __future__ import annotations

from medgem.inputs.front import (
    LoadedImages,
    decode_data_url,
    deidentify_upload,
    from_pil,
    images_from_bytes,
    load_inputs,
    read_images,
    try_data_url,
)
from medgem.inputs.load import load_medical_input, load_medical_inputs
from medgem.inputs.options import DEFAULT_CT_WINDOWS, ImagingOptions, MedicalInput
from medgem.inputs.preview import encode_image, save_preprocessed, to_model_size

__all__ = ["DEFAULT_CT_WINDOWS", "ImagingOptions", "LoadedImages", "MedicalInput",
           "decode_data_url", "deidentify_upload", "encode_image", "from_pil", "images_from_bytes",
           "load_inputs", "load_medical_input", "load_medical_inputs", "read_images",
           "save_preprocessed", "to_model_size", "try_data_url"]
