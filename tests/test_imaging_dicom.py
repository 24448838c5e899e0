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


def test_12_bit_jpeg_extended_decodes_when_libjpeg_refuses_it() -> None:
    """JPEG-lossy.dcm (12-bit JPEG Extended) has scan headers libjpeg rejects, and Pillow and
    GDCM take no 12-bit JPEG; imagecodecs decodes it to the stored values of JPGExtended.dcm
    (the same image, encoded so that libjpeg reads it), within the IDCT's rounding (1 of 4096).
    In a child: native decoders."""
    script = (
        "import numpy as np, pydicom\n"
        "from medgem.inputs import read_inputs\n"
        "from medgem.inputs.dicom import decode_frames\n"
        f"hard = decode_frames(pydicom.dcmread({data('JPEG-lossy.dcm')!r}), 'hard').astype(int)\n"
        f"easy = decode_frames(pydicom.dcmread({data('JPGExtended.dcm')!r}), 'easy').astype(int)\n"
        f"item = read_inputs([{data('JPEG-lossy.dcm')!r}]).items[0]\n"
        "print(item.metadata['transfer_syntax'], item.images[0].size, hard.shape == easy.shape,"
        " int(np.abs(hard - easy).max()), int(easy.max()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "JPEG Extended (Process 2 and 4) (256, 1024) True 1 264"


@pytest.mark.parametrize("name", ["old.dcm", "old"])
def test_a_file_without_file_meta_is_read_whatever_its_first_element(tmp_path: Path, name: str) -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    for tag in [element.tag for element in ds if element.tag.group < 0x0010]:  # it now starts at (0010,0010)
        del ds[tag]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.preamble = None
    pydicom.filewriter.dcmwrite(tmp_path / name, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (tmp_path / name).read_bytes()[:4] == b"\x10\x00\x10\x00"  # no preamble, no DICM, group 0010 first
    item = read_inputs([tmp_path / name]).items[0]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.filewriter.dcmwrite(tmp_path / "with_meta.dcm", ds, implicit_vr=False, little_endian=True)
    expected = read_inputs([tmp_path / "with_meta.dcm"]).items[0]
    assert item.metadata["transfer_syntax"] == "Implicit VR Little Endian"
    assert np.array_equal(np.asarray(item.images[0]), np.asarray(expected.images[0]))
