"""Time reading and preparing an 85-slice 512x512 CT series, stage by stage.

Generates the series into a temp dir (uncompressed, and JPEG 2000 lossless through
pylibjpeg-openjpeg), then times each stage of what ``load_medical_input`` does:

    read    parse headers, group, sort, parse the sampled files and decode their pixels
    HU      rescale slope/intercept (modality LUT)
    window  three HU windows -> RGB uint8
    resize  to 896x896 (the model's processor does this; measured for the total)
    encode  JPEG 95 per slice (what the serving side sends) and PNG (--save-preprocessed)

and the end-to-end ``load_medical_input`` call. Run: ``python benchmarks/bench_imaging.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # imaging_fixtures

from imaging_fixtures import write_ct_series
from medgem.inputs import ImagingOptions, encode_image, read_inputs, to_model_size
from medgem.inputs.dicom import decode_frames, modality_values, read_header
from medgem.inputs.series import folder_sources, group_series, sample_indices, sort_slices
from medgem.inputs.volume import to_images
from medgem.inputs.windows import ct_to_rgb

SLICES, SIDE = 85, 512


def make_volume() -> np.ndarray:
    """A body-like phantom: air outside, water-ish body, a bone ring, noise; (S, H, W) HU."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    radius = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    slice_hu = np.where(radius < 200, 40, -1000).astype(np.int16)
    slice_hu[(radius > 180) & (radius < 195)] = 1000
    return np.stack([slice_hu + rng.integers(-20, 20, slice_hu.shape, dtype=np.int16) for _ in range(SLICES)])


def compress_folder(src: Path, dst: Path) -> None:
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    dst.mkdir()
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.save_as(dst / path.name)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def stages(folder: Path) -> dict[str, float]:
    options = ImagingOptions()
    times: dict[str, float] = {}

    def read() -> list[np.ndarray]:
        series = group_series(folder_sources(folder, options), options)[0]
        sort_slices(series)
        picked = sample_indices(len(series.members), options.max_slices)
        out = []
        for i in picked:
            source, _ = series.members[i]
            ds = read_header(source, pixels=True)
            out.append((ds, decode_frames(ds, source.name)))
        return out

    times["read"], decoded = timed(read)
    times["HU"], hu = timed(lambda: np.stack([modality_values(ds, px) for ds, px in decoded]))
    times["window"], rgb = timed(lambda: to_images(ct_to_rgb(hu, options.ct_windows)))
    times["resize"], _ = timed(lambda: [to_model_size(im) for im in rgb])
    times["encode JPEG 95"], _ = timed(lambda: [encode_image(im) for im in rgb])
    times["encode PNG"], _ = timed(lambda: [encode_image(im, "PNG") for im in rgb])
    times["read..JPEG total"] = sum(v for k, v in times.items() if k != "encode PNG")
    times["load_medical_input"], _ = timed(lambda: read_inputs([folder]).items[0])
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_ct_series(root / "raw", make_volume(), phi=False)
        compress_folder(root / "raw", root / "j2k")
        stages(root / "raw")  # warm imports and the page cache
        results = {"uncompressed": stages(root / "raw"), "JPEG 2000": stages(root / "j2k")}
    names = list(next(iter(results.values())))
    print(f"{SLICES} slices {SIDE}x{SIDE} CT, seconds. resize to 896 and encoding happen downstream")
    print("(processor / transport), so load_medical_input = read + HU + window.")
    print(f"{'stage':<20}" + "".join(f"{k:>14}" for k in results))
    for name in names:
        print(f"{name:<20}" + "".join(f"{r[name]:>14.3f}" for r in results.values()))


if __name__ == "__main__":
    main()
