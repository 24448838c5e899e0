"""The CPU fast path against transformers, on a MedGemma-4B-shaped checkpoint (random weights).

One invocation measures, each engine/format in its own child process (so peak RSS is its own and
two 4B models are never in memory together):
  - memory bandwidth (numpy copy of a 1 GiB array) and the decode ceiling it implies;
  - transformers bf16 (the notebook's way): 200-token prefill, decode speed, and its vision
    tower in float32 vs bf16;
  - llama.cpp per GGUF format: the same prefill and decode, an image question's time to first
    token, and a follow-up about the same image (prefix reuse, no second vision pass).

    python benchmarks/bench_llamacpp.py                 # 4B shapes (~20 min on 2 cores)
    python benchmarks/bench_llamacpp.py --formats q4_k_m,q8_0

The checkpoint is built once (bf16, ~8.6 GB) in /tmp/medgem-bench-4b, or reused from
benchmarks/bench_transformers.py; GGUF files are converted once next to it with `medgem convert`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT_TOKENS = 200
SEED_TEXT = ("How do you differentiate bacterial from viral pneumonia on a chest radiograph, and "
             "which findings should prompt a CT scan or a follow-up film? ")


def measure_bandwidth(size_gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
    """Memory bandwidth in GB/s: a numpy copy of a 1 GiB array (bytes read + written, as STREAM
    counts a copy) on one thread and split over all cores, and a read-only sum over all cores."""
    import threading

    import numpy as np

    from medgem.hardware import best_seconds, usable_cores

    source = np.ones(int(size_gib * 2**30) // 8, dtype=np.float64)
    target = np.empty_like(source)
    cores = usable_cores()

    def on_all_cores(part: Any) -> None:
        step = len(source) // cores
        threads = [threading.Thread(target=part, args=(i * step, (i + 1) * step)) for i in range(cores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # best_seconds' warm-up call also takes the target's first-touch page faults
    copy_1 = 2 * source.nbytes / best_seconds(lambda: np.copyto(target, source), repeats) / 1e9
    copy_n = 2 * source.nbytes / best_seconds(lambda: on_all_cores(
        lambda a, b: np.copyto(target[a:b], source[a:b])), repeats) / 1e9
    read_n = source.nbytes / best_seconds(
        lambda: on_all_cores(lambda a, b: source[a:b].sum()), repeats) / 1e9
    return {"copy_1_thread": copy_1, "copy_all_cores": copy_n, "read_all_cores": read_n}


def prompt_of(engine: Any, tokens: int) -> str:
    """Completion text that tokenizes to exactly ``tokens`` tokens (BOS included)."""
    text = SEED_TEXT * (tokens // 10)
    while True:
        ids = engine_tokens(engine, text)
        if len(ids) <= tokens:
            return text
        text = text[: int(len(text) * (tokens / len(ids)) * 0.999)]


def engine_tokens(engine: Any, text: str) -> list[int]:
    if hasattr(engine, "tokenize"):
        return list(engine.tokenize("<bos>" + text))
    return list(engine.tokenizer("<bos>" + text, add_special_tokens=False).input_ids)


def text_request(text: str, new_tokens: int) -> Any:
    from medgem.request import GenerationOptions, Message, Request, TextPart

    return Request((Message("user", (TextPart(text),)),), GenerationOptions(max_new_tokens=new_tokens),
                   template="completion")


def finish(engine: Any, request: Any) -> Any:
    *_, final = engine.generate(request)
    return final


def child_transformers(checkpoint: Path, new_tokens: int) -> dict[str, Any]:
    import torch

    from medgem.engines import HFOptions, load_engine
    from medgem.resolve import resolve_checkpoint

    began = time.perf_counter()
    engine: Any = load_engine("hf", resolve_checkpoint(checkpoint),
                              HFOptions(dtype="bfloat16", progress=False, check_memory=False))
    result = measure_text(engine, new_tokens, time.perf_counter() - began)
    # The vision tower (27 SigLIP layers on 4096 patches): float32 in full; bf16 on its first
    # 3 layers only (the full bf16 tower takes ~4 minutes here) and scaled by the per-layer ratio.
    inner = engine.model.model
    tower = inner.vision_tower
    pixels = torch.randn(1, 3, 896, 896)
    with torch.inference_mode():
        # get_image_features runs the projector after the tower: both in float32, or the
        # projector's bf16 weights meet float32 activations ("expected m1 and m2 to have the
        # same dtype").
        tower.to(torch.float32)
        inner.multi_modal_projector.to(torch.float32)
        result["vision_f32_s"] = _timed(lambda: inner.get_image_features(pixel_values=pixels))
        layers = tower.encoder.layers
        tower.encoder.layers = layers[:3]
        f32_3 = _timed(lambda: tower(pixel_values=pixels))
        tower.to(torch.bfloat16)
        bf16_3 = _timed(lambda: tower(pixel_values=pixels.to(torch.bfloat16)))
        tower.encoder.layers = layers
    result["vision_bf16_s_est"] = result["vision_f32_s"] * bf16_3 / f32_3
    result["vision_bf16_vs_f32_3_layers"] = [bf16_3, f32_3]
    return result


def measure_text(engine: Any, new_tokens: int, load_s: float) -> dict[str, Any]:
    """Prefill of a PROMPT_TOKENS-long prompt and decode speed, the same for every engine."""
    final = finish(engine, text_request(prompt_of(engine, PROMPT_TOKENS), new_tokens))
    return {
        "load_s": load_s, "prompt_tokens": final.usage.prompt_tokens,
        "prefill_tok_s": final.usage.prompt_tokens / final.timings.first_token_s,
        "decode_tok_s": final.timings.decode_tokens_per_s,
    }


def _timed(work: Any) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def child_llamacpp(folder: Path, new_tokens: int) -> dict[str, Any]:
    from PIL import Image

    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart
    from medgem.resolve import resolve_checkpoint

    began = time.perf_counter()
    engine: Any = load_engine("llamacpp", resolve_checkpoint(folder), LlamaCppOptions())
    result = measure_text(engine, new_tokens, time.perf_counter() - began)
    if engine.capabilities.images:
        image = Image.linear_gradient("L").resize((896, 896)).convert("RGB")
        system = Message("system", (TextPart("You are an expert radiologist."),))
        ask = Message("user", (ImagePart(image), TextPart("Describe this X-ray")))
        first = finish(engine, Request((system, ask), GenerationOptions(max_new_tokens=4)))
        follow = Request((system, ask, Message("assistant", (TextPart("The lungs are clear."),)),
                          Message("user", (TextPart("Is there a pneumothorax?"),))),
                         GenerationOptions(max_new_tokens=4))
        second = finish(engine, follow)
        result.update({
            "image_prompt_tokens": first.usage.prompt_tokens,
            "image_ttft_s": first.timings.first_token_s, "image_vision_s": first.extra["vision_s"],
            "follow_ttft_s": second.timings.first_token_s, "follow_vision_s": second.extra["vision_s"],
            "follow_reused_tokens": second.extra["reused_prompt_tokens"],
        })
    return result


def run_child(kind: str, path: Path, new_tokens: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, str(path), "--new-tokens", str(new_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1][7:]))


def ensure_checkpoint(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch

    from medgem.demo.build import MEDGEMMA_4B, build_checkpoint

    torch.set_default_dtype(torch.bfloat16)
    try:
        return build_checkpoint(folder, shape=MEDGEMMA_4B, model_id="medgem-test-4b-shaped",
                                dtype="bfloat16")
    finally:
        torch.set_default_dtype(torch.float32)


def ensure_gguf(checkpoint: Path, quant: str) -> Path:
    out = checkpoint.parent / f"{checkpoint.name}-gguf-{quant}"
    if not (out / "model.gguf").exists():
        from medgem.engines.gguf.convert import convert_checkpoint
        from medgem.engines.llamacpp.verify import check_conversion

        convert_checkpoint(checkpoint, quant, out, progress=True, verify=check_conversion)
    return out


def table(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>14}  {note}" for name, value, note in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/medgem-bench-4b"))
    parser.add_argument("--formats", default="q4_k_m", help="comma-separated: q4_k_m,q8_0,f16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        if kind == "transformers":
            result = child_transformers(Path(path), min(args.new_tokens, 16))
        else:
            result = child_llamacpp(Path(path), args.new_tokens)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print("RESULT " + json.dumps(result))
        return
    checkpoint = ensure_checkpoint(args.dir)
    bandwidths = measure_bandwidth()
    print(f"bandwidth GB/s: {json.dumps(bandwidths)}, cores: {len(os.sched_getaffinity(0))}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_transformers:
        results["transformers bf16"] = run_child("transformers", checkpoint, args.new_tokens)
        print("transformers bf16:", json.dumps(results["transformers bf16"]), flush=True)
    for quant in args.formats.split(","):
        folder = ensure_gguf(checkpoint, quant)
        results[f"llama.cpp {quant}"] = run_child("llamacpp", folder, args.new_tokens)
        results[f"llama.cpp {quant}"]["model_bytes"] = (folder / "model.gguf").stat().st_size
        print(f"llama.cpp {quant}:", json.dumps(results[f"llama.cpp {quant}"]), flush=True)
    print(render(results, bandwidths))


def render(results: dict[str, dict[str, Any]], bandwidths: dict[str, float]) -> str:
    base = results.get("transformers bf16")
    # The ceiling uses the best bandwidth measured (a stricter bar than the one-thread copy).
    bandwidth = max(bandwidths.values())
    rows: list[tuple[str, str, str]] = [
        ("bandwidth, copy 1 thread", f"{bandwidths['copy_1_thread']:.1f} GB/s", ""),
        ("bandwidth, copy all cores", f"{bandwidths['copy_all_cores']:.1f} GB/s", ""),
        ("bandwidth, read all cores", f"{bandwidths['read_all_cores']:.1f} GB/s", "ceiling basis: the best of the three"),
    ]
    if base:
        rows += [
            ("transformers bf16 prefill", f"{base['prefill_tok_s']:.2f} tok/s", f"{base['prompt_tokens']} tokens"),
            ("transformers bf16 decode", f"{base['decode_tok_s']:.2f} tok/s", ""),
            ("transformers vision f32", f"{base['vision_f32_s']:.1f} s", "27 layers, 896 px"),
            ("transformers vision bf16", f"{base['vision_bf16_s_est']:.1f} s",
             f"est. from 3 layers; bf16/f32 time = {base['vision_bf16_s_est'] / base['vision_f32_s']:.2f}"),
            ("transformers peak RSS", f"{base['peak_rss_gb']:.1f} GB", ""),
        ]
    for name, r in results.items():
        if not name.startswith("llama.cpp"):
            continue
        ceiling = bandwidth * 1e9 / r["model_bytes"]
        need = "q4_k_m" in name  # the targets are for Q4_K_M
        rows.append((f"{name} prefill", f"{r['prefill_tok_s']:.2f} tok/s",
                     f"{r['prefill_tok_s'] / base['prefill_tok_s']:.1f}x transformers" + (" (need >= 6x)" if need else "")
                     if base else ""))
        rows.append((f"{name} decode", f"{r['decode_tok_s']:.2f} tok/s",
                     (f"{r['decode_tok_s'] / base['decode_tok_s']:.1f}x transformers"
                      + (" (need >= 4x); " if need else "; ") if base else "")
                     + f"{100 * r['decode_tok_s'] / ceiling:.0f}% of the {ceiling:.1f} tok/s ceiling"
                     + (" (need >= 70%); " if need else "; ")
                     + f"{100 * r['decode_tok_s'] * r['model_bytes'] / 1e9 / bandwidths['copy_1_thread']:.0f}% "
                     + "of the 1-thread-copy ceiling"))
        if "image_ttft_s" in r:
            rows.append((f"{name} image TTFT", f"{r['image_ttft_s']:.1f} s",
                         f"vision {r['image_vision_s']:.1f} s, {r['image_prompt_tokens']} tokens (need <= 60 s)"))
            rows.append((f"{name} follow-up TTFT", f"{r['follow_ttft_s']:.2f} s",
                         f"vision {r['follow_vision_s']:.1f} s, {r['follow_reused_tokens']:.0f} tokens reused (need <= 5 s)"))
        rows.append((f"{name} peak RSS", f"{r['peak_rss_gb']:.2f} GB",
                     f"model {r['model_bytes'] / 1e9:.2f} GB" + (" (need < 5 GB)" if "q4_k_m" in name else "")))
    return table(rows)


if __name__ == "__main__":
    main()
