"""The inputs stage, the one front door: paths, uploads, data URLs and PIL images -> the RGB
images MedGemma gets, their prompt layout, and PHI-free facts about them. No model code here.

``front.py`` holds the door (``read_inputs`` -> ``Inputs``) and what may be kept of an upload
(``deidentify_upload``); ``readers.py`` the table of readers behind it (DICOM file/folder/zip,
NIfTI, pictures, slides, PDFs), with windows, series, volumes and de-identification beside it::

    from medgem.inputs import ImagingOptions, read_inputs, save_preprocessed
    inputs = read_inputs(["study/"], ImagingOptions(series="1.2.3"))
    save_preprocessed(inputs.items, "preview/")
"""

from __future__ import annotations

from medgem.inputs.front import (
    InputItem,
    Inputs,
    Upload,
    decode_data_url,
    deidentify_upload,
    read_inputs,
    try_data_url,
)
from medgem.inputs.options import DEFAULT_CT_WINDOWS, ImagingOptions, Layout, MedicalInput
from medgem.inputs.preview import encode_image, save_preprocessed, to_model_size

__all__ = ["DEFAULT_CT_WINDOWS", "ImagingOptions", "InputItem", "Inputs", "Layout", "MedicalInput",
           "Upload", "decode_data_url", "deidentify_upload", "encode_image", "read_inputs",
           "save_preprocessed", "to_model_size", "try_data_url"]
