"""Intensity windows: pure functions from raw values to 8-bit display values.

The arithmetic follows Google's MedGemma CT notebook exactly (clip, shift, divide in float32,
multiply by 255, truncate to uint8) so the pixels match what the model was trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from medgem.inputs.options import WindowRange


def window_to_uint8(values: NDArray[np.generic], low: float, high: float) -> NDArray[np.uint8]:
    """Map ``low..high`` (black..white, ``high > low``) linearly onto 0..255, clipping outside
    and truncating like the notebook; the result has the shape of ``values``."""
    if high <= low:
        raise ValueError(f"window {low}..{high} is empty: high must exceed low")
    out = np.clip(values, low, high).astype(np.float32)
    out -= np.float32(low)
    out /= np.float32(high - low)
    out *= np.float32(255.0)
    return out.astype(np.uint8)


def ct_to_rgb(hu: NDArray[np.generic], windows: Sequence[WindowRange]) -> NDArray[np.uint8]:
    """Window Hounsfield units (..., H, W) into three channels (..., H, W, 3), one (low, high)
    window each for red, green and blue (MedGemma's CT encoding)."""
    if len(windows) != 3:
        raise ValueError(f"CT needs three windows (red, green, blue), got {len(windows)}")
    return np.stack([window_to_uint8(hu, low, high) for low, high in windows], axis=-1)


def minmax_to_uint8(values: NDArray[np.generic]) -> NDArray[np.uint8]:
    """Scale ``values`` so that their minimum is 0 and their maximum 255; pass a whole MR volume
    so its slices share one scale.

    A constant image (no range) becomes all zeros, with a warning, rather than dividing by zero.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        warnings.warn("image has a single intensity; it is shown black", stacklevel=2)
        return np.zeros(values.shape, dtype=np.uint8)
    return window_to_uint8(values, lo, hi)


def grey_to_rgb(grey: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Repeat a (..., H, W) grey array into (..., H, W, 3)."""
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)
