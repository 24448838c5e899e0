"""save_preprocessed writes exactly what the model gets; resize and encode helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli
from imaging_fixtures import hu_phantom, write_ct_series
from medgem.inputs import encode_image, read_inputs, save_preprocessed, to_model_size


def test_one_png_per_slice_and_per_image_with_identical_pixels(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", np.stack([hu_phantom()] * 3))
    Image.new("RGB", (5, 4), (9, 8, 7)).save(tmp_path / "photo.png")
    items = [read_inputs([tmp_path / "ct"]).items[0], read_inputs([tmp_path / "photo.png"]).items[0]]
    written = save_preprocessed(items, tmp_path / "out")
    assert [p.name for p in written] == [
        "01_ct_slice_001.png", "01_ct_slice_002.png", "01_ct_slice_003.png", "02_photo.png"]
    for path, image in zip(written, [*items[0].images, *items[1].images], strict=True):
        with Image.open(path) as saved:
            assert saved.mode == "RGB" and not saved.text  # no metadata chunks at all
            assert np.array_equal(np.asarray(saved), np.asarray(image))


def test_to_model_size_and_encode() -> None:
    image = Image.new("RGB", (512, 300), (10, 20, 30))
    assert to_model_size(image).size == (896, 896)
    assert encode_image(image, "PNG").startswith(b"\x89PNG")
    assert encode_image(image).startswith(b"\xff\xd8")  # JPEG 95 by default, as served


def test_save_preprocessed_onto_a_file_is_one_line(tmp_path: Path) -> None:
    """--save-preprocessed naming an existing file (or a path under one) was "unexpected error:
    FileExistsError"; it is one line naming the flag."""
    Image.new("RGB", (5, 4), (9, 8, 7)).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    for target in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "out"):
        result = run_cli("inspect", str(tmp_path / "photo.png"), "--save-preprocessed", str(target))
        assert result.returncode == 1, result.stderr
        assert "unexpected error" not in result.stderr, result.stderr
        assert f"cannot write the preprocessed images to {target}" in result.stderr, result.stderr
        assert "give --save-preprocessed a folder" in result.stderr, result.stderr
