"""GPU checks for the transformers engine, run as one prepared script on a CUDA machine.

1. Direct and pipeline paths give identical greedy tokens on CUDA (bf16), text and image.
2. --quantize 4bit (NF4, double quant) and 8bit load and answer through bitsandbytes.
3. MedGemma-4B-shaped random weights: load, text decode tok/s and image time to first token for
   both paths in bf16, and the 4-bit direct path; peak GPU memory for each.

    python benchmarks/gpu_check.py [--skip-4b] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def tiny_checks(root: Path, device: str) -> dict[str, Any]:
    from PIL import Image

    from medgem import MedGemma
    from medgem.demo.build import build_checkpoint

    vlm = build_checkpoint(root / "tiny-vlm", multimodal=True, model_id="medgem-test-vlm")
    image = Image.linear_gradient("L").resize((96, 80)).convert("RGB")
    out: dict[str, Any] = {}
    answers = {}
    for engine in ("hf", "hf-pipeline"):
        model = MedGemma.load(vlm, engine=engine, options={"device": device, "progress": False})
        answers[engine] = (
            model.ask("Describe this X-ray", images=[image], system="You are an expert radiologist.",
                  max_new_tokens=16).raw,
            model.ask("Bacterial or viral?", max_new_tokens=16).raw,
        )
        out[f"{engine}_dtype"] = model.engine.info.dtype
        model.close()
    out["paths_identical"] = answers["hf"] == answers["hf-pipeline"]
    for quantize in ("4bit", "8bit"):
        try:
            model = MedGemma.load(vlm, options={"device": device, "quantize": quantize, "progress": False})
            answer = model.ask("Describe this X-ray", images=[image], max_new_tokens=8)
            out[f"{quantize}"] = {"ok": True, "completion_tokens": answer.usage.completion_tokens,
                                  "quantization": model.engine.info.quantization}
            model.close()
        except Exception as exc:  # recorded, the other checks go on
            out[f"{quantize}"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def four_b(root: Path, device: str) -> dict[str, Any]:
    import torch
    from PIL import Image

    from medgem import MedGemma
    from medgem.demo.build import MEDGEMMA_4B, build_checkpoint

    started = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    folder = build_checkpoint(root / "4b", shape=MEDGEMMA_4B, model_id="medgem-test-4b-shaped",
                              dtype="bfloat16")
    torch.set_default_dtype(torch.float32)
    results: dict[str, Any] = {"build_s": time.perf_counter() - started}
    image = Image.linear_gradient("L").resize((896, 896)).convert("RGB")
    question = "How do you differentiate bacterial from viral pneumonia? " * 4
    for label, engine, quantize in (("pipeline-bf16", "hf-pipeline", None), ("direct-bf16", "hf", None),
                                    ("direct-4bit", "hf", "4bit")):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            model = MedGemma.load(folder, engine=engine, options={"device": device, "quantize": quantize, "progress": False})
        except Exception as exc:
            results[label] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        load_s = time.perf_counter() - t0
        model.ask("warm up", max_new_tokens=2)
        text = model.ask(question, max_new_tokens=64)
        pic = model.ask("Describe this X-ray", images=[image], max_new_tokens=8)
        results[label] = {
            "load_s": round(load_s, 2),
            "text_ttft_s": round(text.timings.first_token_s, 3),
            "decode_tok_s": round(text.timings.decode_tokens_per_s, 2),
            "image_prompt_tokens": pic.usage.prompt_tokens,
            "image_ttft_s": round(pic.timings.first_token_s, 3),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "raw": text.raw[:80],
        }
        model.close()
        del model
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--skip-4b", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="medgem-gpu-"))
    report: dict[str, Any] = {"python": sys.version.split()[0]}
    import torch
    import transformers

    report["torch"] = torch.__version__
    report["transformers"] = transformers.__version__
    report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report["tiny"] = tiny_checks(root, args.device)
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_4b:
        report["medgemma_4b_shaped"] = four_b(root, args.device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
