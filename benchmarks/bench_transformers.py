"""Both transformers paths on a MedGemma-4B-shaped checkpoint (random weights): load time, time to
first token, decode speed and peak RSS, with the pipeline path as the baseline.

Each path runs in its own child process so peak RSS is that path's own; both run in this one
benchmark invocation, on the same checkpoint and prompts, one after the other.

    python benchmarks/bench_transformers.py             # 4B shapes (needs ~20 GB RAM, minutes)
    python benchmarks/bench_transformers.py --shape tiny  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(shape_name: str, folder: Path) -> Path:
    import torch

    from medgem.demo.build import MEDGEMMA_4B, TINY, build_checkpoint

    if (folder / "config.json").exists():
        return folder
    shape = MEDGEMMA_4B if shape_name == "4b" else TINY
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: 8.6 GB instead of 17 GB
    try:
        return build_checkpoint(folder, shape=shape, model_id=f"medgem-test-{shape_name}-shaped",
                                dtype="bfloat16")
    finally:
        torch.set_default_dtype(torch.float32)


def measure(engine: str, checkpoint: Path, new_tokens: int, image_tokens: int, dtype: str) -> dict[str, float]:
    """One path: load, a text question, an image question. Runs in a child process."""
    from PIL import Image

    from medgem import MedGemma

    started = time.perf_counter()
    model = MedGemma.load(checkpoint, engine=engine, options={"progress": False, "dtype": dtype})
    load_s = time.perf_counter() - started
    question = "How do you differentiate bacterial from viral pneumonia? " * 4
    text = model.ask(question, max_new_tokens=new_tokens)
    image = Image.linear_gradient("L").resize((896, 896)).convert("RGB")
    pic = model.ask("Describe this X-ray", images=[image], system="You are an expert radiologist.",
                    max_new_tokens=image_tokens)
    return {
        "load_s": load_s,
        "text_prompt_tokens": text.usage.prompt_tokens,
        "text_ttft_s": text.timings.first_token_s,
        "decode_tok_s": text.timings.decode_tokens_per_s,
        "image_prompt_tokens": pic.usage.prompt_tokens,
        "image_ttft_s": pic.timings.first_token_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "tokens": text.raw,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["4b", "tiny"], default="4b")
    parser.add_argument("--dir", type=Path, help="where to build/keep the checkpoint")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--image-tokens", type=int, default=4)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child[0], Path(args.child[1]), args.new_tokens, args.image_tokens, args.dtype)
        print("RESULT " + json.dumps(result))
        return
    folder = args.dir or Path(tempfile.gettempdir()) / f"medgem-bench-{args.shape}"
    t0 = time.perf_counter()
    checkpoint = build(args.shape, folder)
    print(f"checkpoint {checkpoint} ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = {}
    for engine in ("hf-pipeline", "hf"):
        child = subprocess.run(
            [sys.executable, __file__, "--child", engine, str(checkpoint), "--new-tokens",
             str(args.new_tokens), "--image-tokens", str(args.image_tokens), "--dtype", args.dtype],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
        )
        line = next((x for x in child.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{engine} failed:\n{child.stderr[-3000:]}")
        results[engine] = json.loads(line[len("RESULT "):])
    base = results["hf-pipeline"]
    print(f"\nMedGemma-{args.shape}-shaped random weights, dtype {args.dtype}, {os.cpu_count()} cores")
    print(f"{'metric':<22} {'hf-pipeline (base)':>19} {'hf (direct)':>12} {'ratio':>7}")
    for key in ("load_s", "text_ttft_s", "decode_tok_s", "image_ttft_s", "peak_rss_gb"):
        a, b = base[key], results["hf"][key]
        print(f"{key:<22} {a:>19.2f} {b:>12.2f} {b / a if a else float('nan'):>7.2f}")
    print(f"prompt tokens: text {base['text_prompt_tokens']}, image {base['image_prompt_tokens']}")
    print(f"same greedy text from both paths: {base['tokens'] == results['hf']['tokens']}")


if __name__ == "__main__":
    main()
