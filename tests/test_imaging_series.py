"""CT/MR series from synthetic DICOM with known Hounsfield units: grouping, sorting, sampling, RGB."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from imaging_fixtures import KNOWN_HU_RGB, hu_phantom, mr_slice, write_ct_series
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs
from medgem.inputs.series import sample_indices


def band_colours(image: np.ndarray, count: int) -> list[tuple[int, ...]]:
    """The RGB of the middle column of each vertical band of ``hu_phantom``."""
    bands = np.array_split(np.arange(image.shape[1]), count)
    return [tuple(int(v) for v in image[0, band[len(band) // 2]]) for band in bands]


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1024.0), (1.0, 0.0)])
def test_known_hu_give_hand_computed_rgb_exactly(tmp_path: Path, slope: float, intercept: float) -> None:
    volume = np.stack([hu_phantom()] * 3)
    write_ct_series(tmp_path / "ct", volume, slope=slope, intercept=intercept)
    item = read_inputs([tmp_path / "ct"]).items[0]
    assert (item.kind, item.modality, len(item.images)) == ("volume", "CT", 3)
    for image in item.images:
        pixels = np.asarray(image)
        assert band_colours(pixels, len(KNOWN_HU_RGB)) == list(KNOWN_HU_RGB.values())
        # Every pixel of a band is identical: no resampling or interpolation happened here.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) == len(KNOWN_HU_RGB)


def slice_order(item_images: list, values: list[int]) -> list[int]:
    """Map each output slice's red value back to the HU it was built from."""
    lookup = {int(np.asarray(window_red(v))): v for v in values}
    return [lookup[int(np.asarray(img)[0, 0, 0])] for img in item_images]


def window_red(hu: int) -> int:
    return int(np.float32((hu + 1024) / 2048) * np.float32(255))


def test_slices_sorted_by_instance_number_not_file_name(tmp_path: Path) -> None:
    values = [-1000, -500, 0, 500, 1000]
    volume = np.stack([np.full((4, 4), v) for v in values])
    write_ct_series(tmp_path / "ct", volume, scramble=True)
    item = read_inputs([tmp_path / "ct"]).items[0]
    assert item.metadata["sorted_by"] == "instance number"
    assert slice_order(item.images, values) == values


def test_slices_sorted_by_position_without_instance_numbers(tmp_path: Path) -> None:
    values = [-800, -400, 0, 400]
    volume = np.stack([np.full((4, 4), v) for v in values])
    write_ct_series(tmp_path / "ct", volume, scramble=True, instance_numbers=False)
    item = read_inputs([tmp_path / "ct"]).items[0]
    assert item.metadata["sorted_by"] == "position"
    assert item.metadata["slice_spacing_mm"] == 2.5
    assert slice_order(item.images, values) == values


def test_uniform_sampling_keeps_ends_and_limits_count(tmp_path: Path) -> None:
    assert sample_indices(5, 85) == [0, 1, 2, 3, 4]
    assert sample_indices(9, 3) == [0, 4, 8]
    picked = sample_indices(200, 85)
    assert len(picked) == 85 and picked[0] == 0 and picked[-1] == 199
    assert picked == sorted(set(picked))
    volume = np.stack([np.full((2, 2), -1000 + 10 * i) for i in range(20)])
    write_ct_series(tmp_path / "ct", volume)
    item = read_inputs([tmp_path / "ct"], ImagingOptions(max_slices=5)).items[0]
    assert item.metadata["slices_total"] == 20 and item.metadata["slices_sent"] == 5
    assert item.metadata["sampled_indices"] == sample_indices(20, 5)
    reds = [int(np.asarray(img)[0, 0, 0]) for img in item.images]
    assert reds == [window_red(-1000 + 10 * i) for i in sample_indices(20, 5)]


def test_mr_series_is_min_max_scaled_over_the_whole_volume(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    folder = tmp_path / "mr"
    folder.mkdir()
    for number, value in enumerate((100, 200, 300), start=1):
        mr_slice(np.full((3, 3), value), instance=number, series_uid=series, study_uid=study).save_as(
            folder / f"{number}", enforce_file_format=True)  # no extension, as PACS exports
    item = read_inputs([folder]).items[0]
    assert item.modality == "MR" and item.metadata["window"] == "volume min-max"
    assert [int(np.asarray(i)[0, 0, 0]) for i in item.images] == [0, 127, 255]


def two_series(root: Path) -> tuple[str, str]:
    first, second = generate_uid(), generate_uid()
    write_ct_series(root / "a", np.stack([hu_phantom()] * 2), series_uid=first)
    write_ct_series(root / "b", np.stack([hu_phantom()] * 3), series_uid=second)
    return first, second


def test_several_series_are_listed_and_one_can_be_chosen(tmp_path: Path) -> None:
    _, second = two_series(tmp_path)
    with pytest.raises(ImageInputError) as caught:
        read_inputs([tmp_path])
    message = str(caught.value)
    assert "2 series" in message and "--series" in message
    assert second[-12:] in message and "3 slices" in message and "CT" in message
    assert second not in message  # short UIDs only
    chosen = read_inputs([tmp_path], ImagingOptions(series=second[-12:])).items[0]
    assert len(chosen.images) == 3 and chosen.metadata["series_count"] == 2
    with pytest.raises(ImageInputError, match=r"matches no series"):
        read_inputs([tmp_path], ImagingOptions(series="9.9.9.9.9"))


def test_zip_of_a_series_reads_like_the_folder(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", np.stack([hu_phantom()] * 4))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, f"DICOM/{path.name}")
        zf.writestr("README.txt", "not dicom")
    from_zip, from_folder = read_inputs([archive]).items[0], read_inputs([tmp_path / "ct"]).items[0]
    assert from_zip.source == "study.zip"
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(from_zip.images, from_folder.images, strict=True))


def test_longitudinal_inputs_are_ordered_by_study_date(tmp_path: Path) -> None:
    import pydicom

    paths = []
    for name, date in (("current", "20240105"), ("prior", "20210720")):
        written = write_ct_series(tmp_path / name, np.stack([hu_phantom()]))
        ds = pydicom.dcmread(written[0])
        ds.StudyDate = date
        ds.save_as(tmp_path / f"{name}.dcm")
        paths.append(tmp_path / f"{name}.dcm")
    items = list(read_inputs(paths).items)
    assert [i.source for i in items] == ["prior.dcm", "current.dcm"]
    assert [i.study_date for i in items] == ["2021-07-20", "2024-01-05"]
