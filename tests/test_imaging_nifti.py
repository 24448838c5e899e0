"""NIfTI volumes through nibabel: orientation, CT guess, exact HU windows."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging_fixtures import KNOWN_HU_RGB
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs


def write_nifti(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (0.8, 0.8, 3.0)) -> Path:
    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_ct_nifti_gets_hu_windows_and_radiological_orientation(tmp_path: Path) -> None:
    data = np.zeros((6, 5, 4), dtype=np.int16)  # (x, y, z) in RAS
    data[:] = -1000
    data[5, 4, :] = 1000  # patient right (high x), anterior (high y)
    item = read_inputs([write_nifti(tmp_path / "ct.nii.gz", data)]).items[0]
    assert (item.kind, item.modality, len(item.images)) == ("volume", "CT", 4)
    assert item.metadata["modality_guessed"] is True and item.metadata["voxel_size_mm"] == [0.8, 0.8, 3.0]
    first = np.asarray(item.images[0])
    assert first.shape == (5, 6, 3)  # rows = y, columns = x
    assert tuple(first[0, 0]) == KNOWN_HU_RGB[1000]  # right-anterior shown top-left
    assert tuple(first[-1, -1]) == KNOWN_HU_RGB[-1000]


def test_mr_nifti_is_min_max_scaled(tmp_path: Path) -> None:
    data = np.stack([np.full((3, 3), v, dtype=np.float32) for v in (10, 20, 30)], axis=-1)
    item = read_inputs([write_nifti(tmp_path / "mr.nii", data)]).items[0]
    assert item.modality == "MR"
    assert [int(np.asarray(i)[0, 0, 0]) for i in item.images] == [0, 127, 255]


def test_modality_hint_overrides_the_guess(tmp_path: Path) -> None:
    data = np.zeros((2, 2, 2), dtype=np.int16)
    item = read_inputs([write_nifti(tmp_path / "w.nii", data)], ImagingOptions(modality="CT")).items[0]
    assert item.modality == "CT" and tuple(np.asarray(item.images[0])[0, 0]) == KNOWN_HU_RGB[0]


def test_damaged_nifti(tmp_path: Path) -> None:
    (tmp_path / "bad.nii").write_bytes(b"not a nifti file" * 30)
    with pytest.raises(ImageInputError, match=r"not a readable NIfTI"):
        read_inputs([tmp_path / "bad.nii"])


def test_nifti_too_many_slices(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "tall.nii", np.zeros((2, 2, 30), dtype=np.int16))
    with pytest.raises(ImageInputError, match=r"over the size or slice limits"):
        read_inputs([path], ImagingOptions(slice_limit=10))


def test_4d_nifti_sends_one_volume_says_so_and_refuses_one_it_lacks(tmp_path: Path) -> None:
    """A 4-D NIfTI (three time points): one volume goes to the model and the input says which,
    how many there are and how to pick another; a --frame past the last is one clear error."""
    data = np.stack([np.full((3, 3, 2), v, dtype=np.float32) for v in (10, 20, 30)], axis=-1)
    path = write_nifti(tmp_path / "fmri.nii", data)
    item = read_inputs([path]).items[0]
    assert len(item.images) == 2 and item.metadata["volumes"] == 3
    assert any("volume 0 of 3" in w and "--frame" in w for w in item.warnings), item.warnings
    second = read_inputs([path], ImagingOptions(frame=1)).items[0]
    assert any("volume 1 of 3" in w for w in second.warnings), second.warnings
    with pytest.raises(ImageInputError, match=r"fmri.nii has 3 volume\(s\); --frame 5 does not exist"):
        read_inputs([path], ImagingOptions(frame=5))
    flat = write_nifti(tmp_path / "t1.nii", data[..., 0])
    with pytest.raises(ImageInputError, match=r"t1.nii has 1 volume\(s\); --frame 2 does not exist"):
        read_inputs([flat], ImagingOptions(frame=2))  # a 3-D file: not silently its only volume
