"""Bytes for one slide question from a PACS: medgem's frame fetch (WADO-RS metadata, then only
the frames under the tissue mask and the sampled patches) against downloading the slide series
whole (WADO-RS, every level and the label), both from a real Orthanc on 127.0.0.1 in one run.

    python benchmarks/pacs_wsi_fetch.py                          # the test slide (tests/test_pacs_wsi.py)
    python benchmarks/pacs_wsi_fetch.py --cols 12 --rows 8       # a wider slide, same tissue cells

The slide is ``pacs_fixtures.load_slide``'s: uncompressed 256-px tiles, levels 1, 4 and 16 times
smaller, stained tissue in four cells; a wider slide adds glass, whose tiles a frame fetch never
asks for, so the ratio falls as the slide grows. Bytes are response bodies as received on both
sides. The seconds mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # slide + PACS fixtures

from medgem.inputs import ImagingOptions, read_inputs
from medgem.inputs.pacs import parse_study_reference
from pacs_fixtures import load_slide, start_orthanc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cols", type=int, default=6, help="cells across (448 px each at 2 um/px)")
    parser.add_argument("--rows", type=int, default=4, help="cells down")
    args = parser.parse_args()

    import requests
    from dicomweb_client import DICOMwebClient

    with tempfile.TemporaryDirectory(prefix="medgem-bench-wsi-") as folder:
        root = Path(folder)
        server = start_orthanc(root / "orthanc")
        try:
            slide = load_slide(server, root / "slide", cells=(args.cols, args.rows))
            ref = parse_study_reference(slide.url(server))
            started = time.perf_counter()
            frames = read_inputs([ref], ImagingOptions(max_archive_bytes=2**40)).studies[0]
            frames_s = time.perf_counter() - started

            moved = [0]
            session = requests.Session()
            session.hooks["response"].append(lambda r, *a, **k: moved.__setitem__(0, moved[0] + len(r.content)))
            client = DICOMwebClient(server.dicomweb, session=session)
            started = time.perf_counter()
            whole = client.retrieve_series(slide.study, slide.series)
            whole_s = time.perf_counter() - started
        finally:
            server.stop()
    print(f"slide: {args.cols * 448}x{args.rows * 448} px at 2 um/px, 3 levels, 256-px tiles, "
          f"{frames.frames_total} level frames; {frames.total_instances} instances with the label")
    print(f"{'fetch':<36}{'frames':>8}{'bytes':>14}{'seconds':>10}")
    print(f"{'whole series (WADO-RS instances)':<36}{frames.frames_total:>8}{moved[0]:>14,}{whole_s:>10.2f}"
          f"   ({len(whole)} instances)")
    print(f"{'medgem by frame (metadata + frames)':<36}{frames.frames:>8}{frames.bytes_moved:>14,}{frames_s:>10.2f}")
    print(f"bytes ratio by frame / whole: {frames.bytes_moved / moved[0]:.3f} "
          "(the by-frame time includes tissue detection and patch assembly)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
