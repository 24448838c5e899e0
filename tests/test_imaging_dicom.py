"""Single DICOM files, real ones from pydicom and pydicom-data (used in place, never downloaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from imaging_fixtures import secondary_capture
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs


def data(name: str) -> str:
    """A pydicom test file already on disk (pydicom itself or the pydicom-data package)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed; install the pydicom-data package"
    return str(path)


def pixels(path: str | Path, options: ImagingOptions | None = None, index: int = 0) -> np.ndarray:
    return np.asarray(read_inputs([path], options).items[0].images[index])


def test_cr_chest_radiograph_monochrome1_is_inverted(tmp_path: Path) -> None:
    item = read_inputs([data("RG1_UNCR.dcm")]).items[0]
    assert (item.kind, item.modality, item.images[0].size) == ("image", "CR", (1841, 1955))
    assert item.metadata["photometric"] == "MONOCHROME1"
    shown = np.asarray(item.images[0])
    assert shown.min() == 0 and shown.max() == 255  # stretched to the full range
    # The same pixels declared MONOCHROME2 must come out exactly inverted.
    ds = pydicom.dcmread(data("RG1_UNCR.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    assert np.array_equal(shown, 255 - pixels(tmp_path / "m2.dcm"))


def test_jpeg2000_radiograph_matches_uncompressed() -> None:
    lossless = read_inputs([data("RG1_J2KR.dcm")]).items[0]
    assert "JPEG 2000" in str(lossless.metadata["transfer_syntax"])
    assert np.array_equal(np.asarray(lossless.images[0]), pixels(data("RG1_UNCR.dcm")))


def test_ct_slice_gets_the_three_hu_windows_by_hand() -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    stored = int(ds.pixel_array[10, 20])
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = [
        int(np.float32((min(max(hu, lo), hi) - lo) / (hi - lo)) * np.float32(255))
        for lo, hi in ((-1024, 1024), (-135, 215), (0, 80))
    ]
    shown = pixels(data("CT_small.dcm"))
    assert shown[10, 20].tolist() == expected


def test_window_override_replaces_ct_windows() -> None:
    shown = pixels(data("CT_small.dcm"), ImagingOptions(window=(40, 400)))
    assert np.array_equal(shown[..., 0], shown[..., 1])  # one grey window
    item = read_inputs([data("CT_small.dcm")], ImagingOptions(window=(40, 400))).items[0]
    assert item.metadata["window"] == "window -160..240"


def test_mr_uses_file_window_and_compressed_variants_match() -> None:
    item = read_inputs([data("MR_small.dcm")]).items[0]
    assert (item.modality, item.images[0].size, item.metadata["window"]) == ("MR", (64, 64), "file window")
    reference = np.asarray(item.images[0])
    for variant in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        assert np.array_equal(pixels(data(variant)), reference), variant


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("SC_rgb_rle.dcm", 0), ("SC_rgb_jpeg_gdcm.dcm", 0), ("SC_ybr_full_uncompressed.dcm", 8),
     ("SC_rgb_dcmtk_+eb+cr.dcm", 8), ("SC_rgb_jpeg_dcmtk.dcm", 12)],
)
def test_colour_photometrics_and_syntaxes_give_the_same_rgb(name: str, tolerance: int) -> None:
    reference = pixels(data("SC_rgb.dcm")).astype(int)
    shown = pixels(data(name)).astype(int)
    assert shown.shape == reference.shape == (100, 100, 3)
    assert np.abs(shown - reference).max() <= tolerance


def test_16_bit_rgb_and_palette_colour() -> None:
    assert pixels(data("SC_rgb_16bit.dcm")).shape == (100, 100, 3)
    palette = read_inputs([data("OT-PAL-8-face.dcm")]).items[0]
    assert palette.metadata["photometric"] == "PALETTE COLOR"
    assert np.asarray(palette.images[0]).std(axis=-1).max() > 0  # really colour


def test_8_bit_grey_with_voi_lut_sequence() -> None:
    item = read_inputs([data("vlut_04.dcm")]).items[0]
    assert item.metadata["bits_stored"] == 8 and item.metadata["window"] == "voi lut"


def test_modality_lut_sequence_is_applied() -> None:
    ds = pydicom.dcmread(data("mlut_18.dcm"))
    assert "ModalityLUTSequence" in ds
    shown = pixels(data("mlut_18.dcm"))
    assert shown.shape == (512, 512, 3) and shown.max() == 255


def test_multiframe_is_a_volume_or_one_chosen_frame() -> None:
    volume = read_inputs([data("emri_small.dcm")]).items[0]
    assert (volume.kind, len(volume.images), volume.metadata["slices_total"]) == ("volume", 10, 10)
    frame = read_inputs([data("emri_small.dcm")], ImagingOptions(frame=3)).items[0]
    assert frame.kind == "image" and frame.metadata["frame"] == 3
    with pytest.raises(ImageInputError, match=r"frame 10 does not exist"):
        read_inputs([data("emri_small.dcm")], ImagingOptions(frame=10))


def test_multiframe_sampling_decodes_only_sampled_frames() -> None:
    item = read_inputs([data("color3d_jpeg_baseline.dcm")], ImagingOptions(max_slices=4)).items[0]
    assert item.metadata["sampled_indices"] == [0, 40, 79, 119]
    assert len(item.images) == 4 and item.images[0].mode == "RGB"


def test_monochrome1_synthetic_inverts_exactly(tmp_path: Path) -> None:
    ds = secondary_capture(np.array([[0, 100], [200, 400]]), photometric="MONOCHROME1")
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    shown = pixels(tmp_path / "m1.dcm")[..., 0]
    # min-max: 0 -> 0, 100 -> 63.75 -> 63, 200 -> 127, 400 -> 255; then inverted.
    assert shown.tolist() == [[255, 192], [128, 0]]


def test_missing_decoder_names_the_package() -> None:
    script = (
        "import sys; sys.modules['pylibjpeg'] = None\n"
        "from medgem.inputs import read_inputs\n"
        f"read_inputs([{data('JPEG-LL.dcm')!r}]).items[0]\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ImageInputError" in result.stderr and "pylibjpeg-libjpeg" in result.stderr
    assert "JPEG Lossless" in result.stderr
