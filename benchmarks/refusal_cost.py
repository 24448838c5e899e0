"""What refusing too many images costs: peak RSS and time to the refusal, for 40 and 400 PNGs
in one OpenAI body, the old way (each image decoded, then counted) against the new one (parts
counted and headers read before any pixel is decoded), in the same run.

    python benchmarks/refusal_cost.py                      # 3000x3000 PNGs, 40 and 400 of them
    python benchmarks/refusal_cost.py --side 256           # a tiny run that proves it works

Each case runs in its own child process, so its peak RSS (VmHWM) is its own; the table shows
what the refusal added to the child's peak after the body was built. Run it on a quiet machine:
the times here are only as good as the machine is idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = r"""
import base64, io, json, sys, time
from PIL import Image
from medgem.errors import ImageInputError
from medgem.inputs import ImagingOptions, read_inputs
from medgem.request.openai_messages import request_from_openai

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

side, count, way = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
buffer = io.BytesIO()
Image.effect_noise((side, side), 40).convert("RGB").save(buffer, format="PNG", optimize=False)
url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(count)]
messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe."}]}]
del buffer
imaging = ImagingOptions()
base = peak()
started = time.perf_counter()
try:
    if way == "before":  # what the old code did: read every image, then count them
        images = []
        for part in parts:
            images.extend(read_inputs([part["image_url"]["url"]], imaging).images)
        if len(images) > 16:
            raise ImageInputError(f"{len(images)} images sent, the limit is 16")
    else:
        request_from_openai(messages, max_images=16, imaging=imaging)
    refused = False
except ImageInputError:
    refused = True
print(json.dumps({"seconds": time.perf_counter() - started, "added": peak() - base,
                  "body": len(url) * count, "refused": refused}))
"""


def run_case(side: int, count: int, way: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CASE, str(side), str(count), way],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {way} case failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000, help="each PNG's side in pixels (default 3000)")
    parser.add_argument("--counts", type=int, nargs="+", default=[40, 400], help="images per body (default 40 400)")
    args = parser.parse_args()
    mib = 1024 * 1024
    print(f"{'images':>6} {'body MiB':>9} {'way':>7} {'refused':>7} {'peak +MiB':>10} {'seconds':>9}")
    for count in args.counts:
        rows = {way: run_case(args.side, count, way) for way in ("before", "after")}
        for way, row in rows.items():
            print(f"{count:>6} {row['body'] / mib:>9.1f} {way:>7} {bool(row['refused'])!s:>7} "
                  f"{row['added'] / mib:>10.1f} {row['seconds']:>9.3f}")
        before, after = rows["before"], rows["after"]
        # after / before: the share of the old cost the refusal still pays (0 = nothing decoded)
        print(f"{count:>6} {'':>9} {'a/b':>7} {'':>7} "
              f"{after['added'] / max(before['added'], 1):>10.4f} {after['seconds'] / max(before['seconds'], 1e-9):>9.4f}")


if __name__ == "__main__":
    main()
