"""Where the vision tower runs fastest on this CPU: an image question's time to first token on
the MedGemma-4B-shaped Q4_K_M (random weights), for each vision path, each in its own process.

    python benchmarks/bench_vision.py          # ~5 min on 2 cores; needs bench_llamacpp.py's GGUF

Rows: llama.cpp's clip (f16, today's path: the baseline), the tower in PyTorch bf16 (oneDNN;
AVX512-BF16/AMX where the CPU has them) and in float32, and the clip again in a second process
with the on-disk embedding cache filled by a first. Columns: the first question, a follow-up
about the same image, the same image in a new conversation. Prints the CPU flags that matter.
An AVX2-only CPU can be imitated: MEDGEM_LLAMA_CPU_VARIANT=haswell ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_vision.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

FOLDER = Path("/tmp/medgem-bench-4b-gguf-q4_k_m")
OPTIONS = [("llama.cpp clip f16", "llamacpp", ""), ("torch bf16", "torch", "bfloat16"),
           ("torch float32", "torch", "float32")]


def child(vision: str) -> None:
    import time

    from PIL import Image

    from medgem.api import MedGemma

    began = time.perf_counter()
    model = MedGemma.load(FOLDER, engine="llamacpp", options={"n_ctx": 2048, "vision": vision}, audit=False)
    load_s = time.perf_counter() - began
    image = Image.linear_gradient("L").resize((896, 896)).convert("RGB")
    rows = []
    # 1: the first question; 2: another question about the same image (the KV prefix up to the
    # image is reused); 3: the same image in a new conversation (a system turn before it: only
    # the embedding cache helps)
    for system, question in (("", "Describe this chest X-ray."), ("", "Is there a pneumothorax?"),
                             ("You are a radiologist.", "Describe this chest X-ray.")):
        request = model.request(question, images=[image], system=system or None, max_new_tokens=1)
        final = list(model.engine.generate(request))[-1]
        rows.append((final.timings.first_token_s, final.extra["vision_s"]))
    print(json.dumps({"load_s": load_s, "ttft_s": rows[0][0], "vision_s": rows[0][1],
                      "follow_up_s": rows[1][0], "again_s": rows[2][0],
                      "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    if not (FOLDER / "model.gguf").exists():
        raise SystemExit(f"no {FOLDER}/model.gguf: run benchmarks/bench_llamacpp.py first")
    from medgem.engines.llamacpp.vision_measure import measure_vision
    from medgem.hardware import cpu_flags

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "avx_vnni")))
    print(f"CPU flags: {' '.join(flags)}; cores: {len(os.sched_getaffinity(0))}")
    print(f"auto picks: {measure_vision('auto')}")
    results = {}
    import tempfile

    disk = tempfile.mkdtemp(prefix="medgem-bench-embeddings-")
    options = [*OPTIONS, ("clip, next process", "llamacpp", "")]  # the disk cache, filled first
    for index, (name, vision, dtype) in enumerate(options):
        env = {**os.environ, "MEDGEM_VISION_DTYPE": dtype} if dtype else dict(os.environ)
        runs = 1
        if index == len(OPTIONS):
            env["MEDGEM_EMBED_CACHE_DIR"] = disk
            runs = 2  # the first fills the cache, the second is the next `medgem ask`
        for _ in range(runs):
            done = subprocess.run([sys.executable, __file__, "--child", vision], capture_output=True,
                                  text=True, env=env, check=False)
        if done.returncode != 0:
            print(f"{name}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results.get(OPTIONS[0][0])
    print(f"{'vision path':<20} | {'TTFT s':>7} | {'vision s':>8} | {'x clip':>6} | "
          f"{'follow-up s':>11} | {'new conversation s':>18} | {'load s':>6} | {'peak RSS GiB':>12}")
    print("-" * 109)
    for name, row in results.items():
        ratio = base["ttft_s"] / row["ttft_s"] if base else float("nan")
        print(f"{name:<20} | {row['ttft_s']:>7.2f} | {row['vision_s']:>8.2f} | {ratio:>6.2f} | "
              f"{row['follow_up_s']:>11.2f} | {row['again_s']:>18.2f} | {row['load_s']:>6.1f} | "
              f"{row['rss_gib']:>12.2f}")
    print("follow-up: another question about the same image (KV prefix reused); new conversation: "
          "a system turn before the same image (embedding cache only); 'clip, next process': a "
          "second process with MEDGEM_EMBED_CACHE_DIR filled by the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
