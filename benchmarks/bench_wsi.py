"""Whole-slide streaming benchmark: a 40,000 x 30,000 px pyramidal slide -> 125 patches.

Writes an Aperio-style slide (0.5 um/px, JPEG tiles, 4x pyramid steps) tile by tile with
tifffile, so the writer never holds the image either, then prepares it in a fresh process the
way ``medgem ask --image slide.svs`` does and reports wall seconds, the share spent on tissue
detection and on reading patches, and the peak resident memory (must stay under 1 GB).

    python benchmarks/bench_wsi.py [--keep DIR] [--scale 0.25]

``--scale`` shrinks the slide (same layout of tissue) for a quick smoke run; the issue's number
is the full-size one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, TILE, MPP = 40_000, 30_000, 256, 0.5
FACTORS = (1, 4, 16, 64)
#: Tissue: discs (centre x, centre y, radius) in level-0 px, about half the slide.
DISCS = [(9_000, 8_000, 7_000), (24_000, 12_000, 9_000), (33_000, 23_000, 6_000),
         (12_000, 22_000, 5_500)]
RSS_LIMIT_MB = 1024


def tile_pixels(factor: int, ty: int, tx: int, scale: float = 1.0) -> np.ndarray:
    """One tile of the level with downsample ``factor``: glass, with stained discs."""
    ys = (np.arange(ty, ty + TILE) * factor / scale)[:, None]  # full-size slide coordinates
    xs = (np.arange(tx, tx + TILE) * factor / scale)[None, :]
    inside = np.zeros((TILE, TILE), dtype=bool)
    for cx, cy, radius in DISCS:
        inside |= (xs - cx) ** 2 + (ys - cy) ** 2 < radius**2
    tile = np.empty((TILE, TILE, 3), dtype=np.uint8)
    tile[:] = (242, 240, 241)
    tile[inside] = (190, 90, 160)
    rng = np.random.default_rng(ty * 7919 + tx)
    tile[inside, 1] += rng.integers(0, 20, int(inside.sum()), dtype=np.uint8)
    return tile


def tiles(factor: int, width: int, height: int, scale: float) -> Iterator[np.ndarray]:
    for ty in range(0, -(-height // factor), TILE):
        for tx in range(0, -(-width // factor), TILE):
            yield tile_pixels(factor, ty, tx, scale)


def write_slide(path: Path, width: int, height: int, scale: float) -> None:
    """The slide, tile by tile (tifffile consumes the iterator as it writes)."""
    import tifffile

    description = (f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] "
                   f"({TILE}x{TILE}) JPEG/RGB Q=80|AppMag = 20|MPP = {MPP}")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for number, factor in enumerate(FACTORS):
            shape = (-(-height // factor), -(-width // factor), 3)
            tif.write(tiles(factor, width, height, scale), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                      compression="jpeg", photometric="rgb", metadata=None,
                      description=description if number == 0 else "Aperio\r\nlevel")


def measure(path: Path) -> dict[str, float]:
    """Prepare the slide once; runs in a fresh process so its peak RSS is the reader's own."""
    import resource

    from medgem.inputs import read_inputs

    started = time.perf_counter()
    item = read_inputs([path]).items[0]
    total = time.perf_counter() - started
    facts = item.metadata
    return {
        "patches": len(item.images),
        "tissue_cells": float(facts["tissue_cells"]),  # type: ignore[arg-type]
        "seconds": total,
        "seconds_tissue": float(facts["seconds_tissue"]),  # type: ignore[arg-type]
        "seconds_patches": float(facts["seconds_patches"]),  # type: ignore[arg-type]
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", type=Path, help="write the slide here and keep it")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink the slide by this factor for a smoke run (default 1: full size)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-wsi-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        width, height = round(WIDTH * args.scale), round(HEIGHT * args.scale)
        path = folder / f"bench-{width}x{height}.svs"
        started = time.perf_counter()
        reused = path.exists()
        if not reused:
            write_slide(path, width, height, args.scale)
        written = "reused from --keep" if reused else f"written in {time.perf_counter() - started:.1f} s"
        result = subprocess.run([sys.executable, __file__, "--measure", str(path)],
                                capture_output=True, text=True, check=True)
        row = json.loads(result.stdout)
        size_mb = path.stat().st_size / 1e6
    total = row["seconds"]
    other = total - row["seconds_tissue"] - row["seconds_patches"]
    print(f"slide: {width}x{height} px at {MPP} um/px, {size_mb:.0f} MB JPEG tiles "
          f"({written})")
    print(f"{'step':<28}{'seconds':>9}{'share':>8}")
    for name, seconds in (("tissue detection (mask)", row["seconds_tissue"]),
                          (f"reading {row['patches']:.0f} patches", row["seconds_patches"]),
                          ("open, grid, overview", other)):
        print(f"{name:<28}{seconds:>9.2f}{seconds / total:>8.0%}")
    print(f"{'total':<28}{total:>9.2f}")
    print(f"patches: {row['patches']:.0f} of {row['tissue_cells']:.0f} tissue cells")
    verdict = "ok" if row["peak_rss_mb"] <= RSS_LIMIT_MB else "OVER"
    print(f"peak RSS: {row['peak_rss_mb']:.0f} MB (limit {RSS_LIMIT_MB} MB: {verdict})")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
