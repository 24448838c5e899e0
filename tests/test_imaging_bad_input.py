"""Bad input: each case gives one actionable ImageInputError and nothing else breaks."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from imaging_fixtures import hu_phantom, write_ct_series
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs


def test_png_named_dcm(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.png")
    (tmp_path / "scan.dcm").write_bytes((tmp_path / "scan.png").read_bytes())
    with pytest.raises(ImageInputError, match=r"scan.dcm is named like DICOM but is not a DICOM file"):
        read_inputs([tmp_path / "scan.dcm"])


def test_empty_file(tmp_path: Path) -> None:
    """An empty file of any name (a failed copy) is said to be empty: not "not an image
    Pillow can read" (.png, .jpg) nor "a damaged zip"."""
    for name in ("x.dcm", "photo.png", "scan.jpg", "series.zip", "noext"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ImageInputError, match=rf"^{name} is empty \(0 bytes\)"):
            read_inputs([tmp_path / name])


def test_truncated_pixel_data(tmp_path: Path) -> None:
    raw = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-5000])
    with pytest.raises(ImageInputError, match=r"cut.dcm has truncated or corrupt pixel data"):
        read_inputs([tmp_path / "cut.dcm"])


def test_truncated_header(tmp_path: Path) -> None:
    raw = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    (tmp_path / "head.dcm").write_bytes(raw[:600])
    with pytest.raises(ImageInputError, match=r"no pixel data|truncated"):
        read_inputs([tmp_path / "head.dcm"])


def test_no_pixel_data() -> None:
    with pytest.raises(ImageInputError, match=r"holds no pixel data .*RT Plan"):
        read_inputs([get_testdata_file("rtplan.dcm", download=False)])


def test_dicom_decompression_bomb(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.Rows = ds.Columns = 60000  # 3.6 gigapixels declared, a few KB stored
    ds.save_as(tmp_path / "bomb.dcm")
    with pytest.raises(ImageInputError, match=r"decompression bomb"):
        read_inputs([tmp_path / "bomb.dcm"])


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_png_decompression_bomb(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(ImageInputError, match=r"bomb|too large"):
        read_inputs([tmp_path / "bomb.png"])
    (tmp_path / "big.png").write_bytes(png_declaring(20_000, 20_000))
    with pytest.raises(ImageInputError, match=r"decompression bomb"):
        read_inputs([tmp_path / "big.png"], ImagingOptions(max_pixels=10_000_000))


def test_zip_bomb_is_refused_before_expanding(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 5_000_000)
    with pytest.raises(ImageInputError, match=r"zip bomb"):
        read_inputs([archive], ImagingOptions(max_archive_bytes=1_000_000))


def test_truncated_zip_is_named_as_a_damaged_zip(tmp_path: Path) -> None:
    """A zip cut short (an interrupted download) lacks its central directory: it is a damaged
    zip, not "an image Pillow cannot read"."""
    write_ct_series(tmp_path / "s", np.stack([hu_phantom(8, 8)] * 3))
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        for path in sorted((tmp_path / "s").iterdir()):
            zf.write(path, path.name)
    cut = tmp_path / "series.zip"
    cut.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(ImageInputError, match=r"series.zip is a damaged or incomplete zip") as caught:
        read_inputs([cut])
    assert "Pillow" not in str(caught.value) and "copy" in str(caught.value)


def test_frame_of_a_single_frame_dicom_that_does_not_exist(tmp_path: Path) -> None:
    """--frame 3 on a one-frame CT was ignored: frame 0 was sent without a word."""
    ct = get_testdata_file("CT_small.dcm", download=False)
    with pytest.raises(ImageInputError, match=r"CT_small.dcm has 1 frame; --frame 3 does not exist"):
        read_inputs([ct], ImagingOptions(frame=3))
    assert len(read_inputs([ct], ImagingOptions(frame=0)).items[0].images) == 1


def test_mixed_image_sizes_in_one_series(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    uid = generate_uid()
    write_ct_series(tmp_path / "s", np.stack([hu_phantom(16, 20)] * 2), series_uid=uid)
    write_ct_series(tmp_path / "s" / "loc", np.stack([hu_phantom(8, 10)]), series_uid=uid)
    with pytest.raises(ImageInputError, match=r"mixes image sizes: 10x8 \(1 slices\), 20x16 \(2 slices\)"):
        read_inputs([tmp_path / "s"])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageInputError, match=r"folder empty is empty"):
        read_inputs([tmp_path / "empty"])


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "scan.bin").write_bytes(b"hello" * 100)
    with pytest.raises(ImageInputError, match=r"none is DICOM"):
        read_inputs([tmp_path / "f"])


def test_more_slices_than_the_limit(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", np.stack([hu_phantom(4, 5)] * 6))
    with pytest.raises(ImageInputError, match=r"6 files, over the limit of 5"):
        read_inputs([tmp_path / "s"], ImagingOptions(slice_limit=5))
    with pytest.raises(ImageInputError, match=r"120 frames, over the limit of 50"):
        read_inputs([get_testdata_file("color3d_jpeg_baseline.dcm", download=False)], ImagingOptions(slice_limit=50))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match=r"does not exist"):
        read_inputs([tmp_path / "nope.dcm"])


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("just text")
    with pytest.raises(ImageInputError, match=r"not an image"):
        read_inputs([tmp_path / "notes.txt"])
