"""A newcomer's first `medgem demo`: cold (the demo model not built yet) and warm (built), as a
user runs it (`python -m medgem demo` in a subprocess): seconds to the first answer byte on
stdout and to the end, with warm as a ratio of cold in the same run.

    python benchmarks/first_hour.py                    # one cold and one warm run
    python benchmarks/first_hour.py --runs 3 --out benchmarks/results/first-hour.txt
    python benchmarks/first_hour.py --max-new-tokens 2 --skip-cold    # a quick check

Cold runs get a fresh medgem cache that holds only what install.sh leaves there (the 270M GGUF
and its tokenizer, linked from the user's cache when present), so they build the demo model as a
first run does. The figures mean something only on a quiet machine: on a shared one they
measure the neighbours.
"""

from __future__ import annotations

import argparse
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(cache: Path, max_new_tokens: int) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit) of one `medgem demo`."""
    env = {**os.environ, "MEDGEM_CACHE": str(cache), "PYTHONUNBUFFERED": "1",
           "MEDGEM_AUDIT_DB": str(cache / "audit.sqlite")}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "medgem", "demo", "--max-new-tokens",
                                str(max_new_tokens)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    first: float | None = None
    with selectors.DefaultSelector() as watch:
        watch.register(process.stdout, selectors.EVENT_READ)
        while True:
            if not watch.select(timeout=1.0):
                if process.poll() is not None:
                    break
                continue
            data = os.read(process.stdout.fileno(), 4096)
            if not data:
                break
            if first is None and data.strip():
                first = time.monotonic() - started
    code = process.wait()
    total = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"medgem demo exited {code}")
    return (first if first is not None else total), total


def fresh_cache(root: Path) -> Path:
    """A medgem cache as install.sh leaves it: the GGUF and tokenizer, no demo model."""
    from medgem.config import cache_dir

    cache = Path(tempfile.mkdtemp(prefix="first-hour-", dir=root))
    for name in ("gguf", "gemma3-tokenizer-v2"):
        if (cache_dir() / name).exists():
            (cache / name).symlink_to(cache_dir() / name)
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs of each kind (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="the demo's budget (default 24, its own)")
    parser.add_argument("--skip-cold", action="store_true", help="warm runs only (uses your medgem cache)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()

    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="medgem-first-hour-") as scratch:
        warm_cache: Path | None = None
        if not args.skip_cold:
            for _ in range(args.runs):
                cache = fresh_cache(Path(scratch))
                rows.append(("cold", *one_run(cache, args.max_new_tokens)))
                warm_cache = cache
        from medgem.config import cache_dir

        warm_cache = warm_cache or cache_dir()
        for _ in range(args.runs):
            rows.append(("warm", *one_run(warm_cache, args.max_new_tokens)))

    lines = [f"# medgem demo, first hour: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, --max-new-tokens {args.max_new_tokens}",
             f"{'run':<6}{'first token s':>15}{'total s':>10}"]
    lines += [f"{kind:<6}{first:>15.1f}{total:>10.1f}" for kind, first, total in rows]
    cold = [r for r in rows if r[0] == "cold"]
    warm = [r for r in rows if r[0] == "warm"]
    if cold and warm:
        ratio_first = statistics.median(r[1] for r in warm) / statistics.median(r[1] for r in cold)
        ratio_total = statistics.median(r[2] for r in warm) / statistics.median(r[2] for r in cold)
        lines.append(f"warm / cold: first token {ratio_first:.2f}x, total {ratio_total:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
