"""Multi-frame DICOMs that are not CT/MR volumes: an ultrasound cine loop goes to the model as
frames in time with a truthful instruction; dose grids and masks are refused unless forced;
``medgem inspect`` shows the instruction and warns. Also: a 12-bit JPEG Extended file names
the decoder that is really missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from imaging_fixtures import base_dataset
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs
from medgem.request import TextPart
from medgem.request.compose import request_for_inputs

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def multiframe(path: Path, *, sop_class: str, modality: str, frames: int, colour: bool = False,
               burned_in: str | None = None) -> Path:
    """A multi-frame file of ``frames`` 16x12 frames, each a different brightness."""
    ds = base_dataset(sop_class=sop_class, modality=modality, series_uid=generate_uid(),
                      study_uid=generate_uid())
    ramp = np.arange(frames, dtype=np.uint16)[:, None, None] * np.ones((1, 12, 16), np.uint16)
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = 12, 16
    ds.PixelRepresentation = 0
    if colour:
        pixels = np.repeat((ramp % 256).astype(np.uint8)[..., None], 3, axis=-1)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        pixels = ramp
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
    if modality == "RTDOSE":
        ds.DoseGridScaling = "0.001"
        ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def prompt_text(path: Path, options: ImagingOptions | None = None) -> str:
    loaded = read_inputs([path], options)
    request = request_for_inputs("What do you see?", loaded)
    return " | ".join(part.text for message in request.messages for part in message.parts
                      if isinstance(part, TextPart))


def test_ultrasound_cine_is_sent_as_frames_with_a_truthful_instruction(tmp_path: Path) -> None:
    cine = multiframe(tmp_path / "cine.dcm", sop_class=US_MULTIFRAME, modality="US", frames=120,
                      colour=True)
    item = read_inputs([cine]).items[0]
    assert item.metadata["sequence"] == "frames" and len(item.images) == 85
    assert item.description.startswith("US ultrasound cine loop: 85 of 120 frames")
    text = prompt_text(cine)
    assert "ultrasound cine loop, in time order" in text
    assert "CT slices" not in text and "SLICE" not in text
    assert "FRAME 1 |" in text and "FRAME 85 |" in text


@pytest.mark.parametrize(("sop_class", "modality", "what"), [
    (RT_DOSE, "RTDOSE", "an RT dose grid"), (SEGMENTATION, "SEG", "a segmentation mask")])
def test_non_image_objects_are_refused_unless_forced(tmp_path: Path, sop_class: str, modality: str,
                                                     what: str) -> None:
    path = multiframe(tmp_path / f"{modality}.dcm", sop_class=sop_class, modality=modality, frames=10)
    with pytest.raises(ImageInputError, match=rf"is {what} .*not an image.*--allow-non-image"):
        read_inputs([path])
    forced = read_inputs([path], ImagingOptions(allow_non_image=True)).items[0]
    assert len(forced.images) == 10 and forced.warnings
    assert "not an image" in forced.warnings[0]
    text = prompt_text(path, ImagingOptions(allow_non_image=True))
    assert "CT slices" not in text and "not images of the patient" in text


def test_a_non_image_object_beside_a_series_is_left_out(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    multiframe(study / "dose.dcm", sop_class=RT_DOSE, modality="RTDOSE", frames=4)
    multiframe(study / "cine.dcm", sop_class=US_MULTIFRAME, modality="US", frames=5)
    item = read_inputs([study]).items[0]
    assert item.modality == "US" and len(item.images) == 5


def test_burned_in_annotation_is_refused_by_default(tmp_path: Path) -> None:
    path = multiframe(tmp_path / "us.dcm", sop_class=US_MULTIFRAME, modality="US", frames=3,
                      burned_in="YES")
    with pytest.raises(ImageInputError, match=r"Burned In Annotation = YES.*--allow-burned-in"):
        read_inputs([path])
    allowed = read_inputs([path], ImagingOptions(allow_burned_in=True)).items[0]
    assert any("Burned In Annotation" in w for w in allowed.warnings)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medgem", *argv], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_inspect_shows_the_instruction_and_warns(tmp_path: Path) -> None:
    cine = multiframe(tmp_path / "cine.dcm", sop_class=US_MULTIFRAME, modality="US", frames=30)
    shown = run_cli("inspect", str(cine))
    assert shown.returncode == 0, shown.stderr
    assert "instruction:" in shown.stdout and "ultrasound cine loop, in time order" in shown.stdout
    assert "each image followed by FRAME n" in shown.stdout
    assert "warning:" in shown.stdout and "not as CT/MR slices" in shown.stdout

    dose = multiframe(tmp_path / "dose.dcm", sop_class=RT_DOSE, modality="RTDOSE", frames=4)
    refused = run_cli("inspect", str(dose))
    assert refused.returncode == 1
    assert refused.stderr.startswith("medgem: error: dose.dcm is an RT dose grid (RTDOSE)")
    forced = run_cli("inspect", str(dose), "--allow-non-image")
    assert forced.returncode == 0, forced.stderr
    assert "warning:" in forced.stdout and "radiotherapy dose grid" in forced.stdout


def test_ct_volumes_keep_the_trained_instruction() -> None:
    from medgem.request.compose import sequence_marker, volume_instruction

    assert "contiguous block of CT slices" in volume_instruction("CT")
    assert "contiguous block of MRI slices" in volume_instruction("MR")
    assert sequence_marker("CT") == "SLICE" and sequence_marker("US") == "FRAME"


def test_12_bit_jpeg_extended_names_the_decoder_really_missing() -> None:
    from pydicom.pixels.decoders.base import get_decoder

    path = get_testdata_file("JPEG-lossy.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test file JPEG-lossy.dcm is not installed")
    decoder = get_decoder("1.2.840.10008.1.2.4.51")
    try:
        item = read_inputs([path]).items[0]
    except ImageInputError as exc:
        message = str(exc)
        assert "bits stored 12" in message
        assert "pip install pylibjpeg-libjpeg" not in message  # it is installed here
        for plugin in decoder.available_plugins:
            assert plugin in message  # the installed decoders are named with why they failed
        assert "imagecodecs" in message  # what decodes it (GDCM refuses 12-bit JPEG too)
    else:  # decoded (imagecodecs, when pydicom's plugins refuse it): 256 columns, 1024 rows
        assert item.images and item.images[0].size == (256, 1024)


def test_ultrasound_frames_are_saved_as_frames_not_slices(tmp_path: Path) -> None:
    from medgem.inputs import save_preprocessed

    cine = read_inputs([multiframe(tmp_path / "cine.dcm", sop_class=US_MULTIFRAME, modality="US", frames=3,
                                   burned_in="NO")]).items[0]
    assert [p.name for p in save_preprocessed([cine], tmp_path / "out")] == [
        "01_cine_frame_001.png", "01_cine_frame_002.png", "01_cine_frame_003.png"]


def test_modalities_known_for_burned_in_text_warn_when_the_header_does_not_say(tmp_path: Path) -> None:
    unsaid = read_inputs([multiframe(tmp_path / "us.dcm", sop_class=US_MULTIFRAME, modality="US", frames=3)]).items[0]
    assert any("no Burned In Annotation" in w and "--allow-burned-in" in w for w in unsaid.warnings)
    allowed = read_inputs([tmp_path / "us.dcm"], ImagingOptions(allow_burned_in=True)).items[0]
    assert not any("no Burned In Annotation" in w for w in allowed.warnings)
    said = read_inputs([multiframe(tmp_path / "no.dcm", sop_class=US_MULTIFRAME, modality="US", frames=3,
                                   burned_in="NO")]).items[0]
    assert not any("Burned In" in w for w in said.warnings)
    ct = read_inputs([multiframe(tmp_path / "ct.dcm", sop_class=CT_IMAGE, modality="CT", frames=3)]).items[0]
    assert not any("Burned In" in w for w in ct.warnings)  # CT consoles do not write on the pixels
