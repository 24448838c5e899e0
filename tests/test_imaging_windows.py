"""Window arithmetic against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from imaging_fixtures import KNOWN_HU_RGB
from medgem.inputs.options import DEFAULT_CT_WINDOWS, ImagingOptions
from medgem.inputs.windows import (
    ct_to_rgb,
    grey_to_rgb,
    minmax_to_uint8,
    window_to_uint8,
)


def test_window_maps_ends_and_truncates_like_the_notebook() -> None:
    values = np.array([-10, 0, 50, 100, 200])
    # (v - 0) / 100 * 255: 0, 127.5 -> 127, 255; outside clipped.
    assert window_to_uint8(values, 0, 100).tolist() == [0, 0, 127, 255, 255]


def test_ct_to_rgb_matches_hand_computed_known_tissues() -> None:
    hu = np.array(list(KNOWN_HU_RGB))
    rgb = ct_to_rgb(hu, DEFAULT_CT_WINDOWS)
    assert rgb.dtype == np.uint8
    assert [tuple(p) for p in rgb.tolist()] == list(KNOWN_HU_RGB.values())


def test_default_windows_are_the_facts_file_values() -> None:
    assert ImagingOptions().ct_windows == ((-1024, 1024), (-135, 215), (0, 80))


def test_minmax_spans_full_range_and_warns_on_flat_image() -> None:
    assert minmax_to_uint8(np.array([100, 200, 300])).tolist() == [0, 127, 255]
    with pytest.warns(UserWarning, match=r"single intensity"):
        assert minmax_to_uint8(np.full((2, 2), 7)).tolist() == [[0, 0], [0, 0]]


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        window_to_uint8(np.zeros(2), 5, 5)
    with pytest.raises(ValueError):
        ct_to_rgb(np.zeros(2), DEFAULT_CT_WINDOWS[:2])
    with pytest.raises(ValueError):
        ImagingOptions(window=(40, 0))


def test_grey_to_rgb_repeats_channels() -> None:
    grey = np.array([[1, 2]], dtype=np.uint8)
    assert grey_to_rgb(grey).tolist() == [[[1, 1, 1], [2, 2, 2]]]
