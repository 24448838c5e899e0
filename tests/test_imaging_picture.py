"""Ordinary pictures: RGB conversion, 16-bit grey stretched, alpha flattened, frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs


def test_png_becomes_one_rgb_image(tmp_path: Path) -> None:
    Image.new("L", (30, 20), 77).save(tmp_path / "x.png")
    item = read_inputs([tmp_path / "x.png"]).items[0]
    assert (item.kind, item.images[0].mode, item.images[0].size) == ("image", "RGB", (30, 20))
    assert item.source == "x.png" and item.modality is None and item.study_date is None


def test_16_bit_grey_png_is_stretched_not_clipped(tmp_path: Path) -> None:
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "x16.png")
    shown = np.asarray(read_inputs([tmp_path / "x16.png"]).items[0].images[0])[..., 0]
    # (v - 1000) / 4000 * 255: 0, 63.75 -> 63, 127.5 -> 127, 255
    assert shown.tolist() == [[0, 63], [127, 255]]


def test_alpha_is_flattened_on_black(tmp_path: Path) -> None:
    Image.new("RGBA", (2, 2), (200, 100, 50, 0)).save(tmp_path / "a.png")
    assert np.asarray(read_inputs([tmp_path / "a.png"]).items[0].images[0]).max() == 0


def test_multipage_frame_choice(tmp_path: Path) -> None:
    pages = [Image.new("L", (4, 4), v) for v in (10, 200)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    item = read_inputs([tmp_path / "p.tif"], ImagingOptions(frame=1)).items[0]
    assert np.asarray(item.images[0])[0, 0, 0] == 200
    with pytest.raises(ImageInputError, match=r"frame 5 does not exist"):
        read_inputs([tmp_path / "p.tif"], ImagingOptions(frame=5))


def test_truncated_jpeg(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "x.jpg", quality=95)
    raw = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageInputError, match=r"truncated"):
        read_inputs([tmp_path / "cut.jpg"])
