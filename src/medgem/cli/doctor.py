"""`medgem doctor`: this machine, the installed engines, and how each variant would run here."""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

from medgem.hardware import GIB, Hardware, detect_hardware
from medgem.memory import budget_for, estimate
from medgem.request.variants import VARIANTS, Variant

ENGINE_PACKAGES = {
    "hf (transformers)": ("transformers", "torch"), "llamacpp (llama-cpp-python)": ("llama_cpp",),
    "remote (OpenAI-compatible, e.g. vLLM)": ("openai",), "bitsandbytes 4/8-bit": ("bitsandbytes",),
}
# The GGUF vision projector (SigLIP tower in f16) that image variants load beside the model.
MMPROJ_BYTES = int(0.85 * GIB)


def measure_bandwidth_gbs(size_mb: int = 256, repeats: int = 3) -> float:
    """Memory bandwidth from a large array copy (bytes read + written), best of a few runs.

    CPU decoding reads every weight once per token, so this bounds tokens per second.
    """
    import time

    import numpy as np

    source = np.ones(size_mb * 1024 * 1024 // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check this machine and what will run on it")
    parser.add_argument("--json", action="store_true", help="print the same facts as JSON")
    parser.set_defaults(func=run)


def llamacpp_report() -> dict[str, Any]:
    """Whether llama.cpp runs on this CPU (proved in a child process) and with which kernels."""
    from medgem.engines.llamacpp_native import cpu_variants, use_extra_buffers
    from medgem.engines.llamacpp_probe import probe
    from medgem.engines.vision_torch import choose_vision

    if importlib.util.find_spec("llama_cpp") is None:
        return {"installed": False, "runs_here": False}
    variants = cpu_variants()
    result = probe()
    compiled = [name for name, value in result.kernels.items() if value == "1"]
    return {"installed": True,
            "build": (f"runtime CPU dispatch ({len(variants)} CPU variants)" if variants
                      else "single build for one CPU (not portable)"),
            "variants": variants, "runs_here": result.ok,
            "detail": result.message() if not result.ok else "", "kernels": compiled,
            "weight_repacking": use_extra_buffers(),
            "vision": dict(zip(("path", "why"), choose_vision(), strict=True))}


def plan(variant: Variant, hardware: Hardware, engines: dict[str, bool], bandwidth_gbs: float
         ) -> dict[str, Any]:
    """The best way to run a variant here: first option that fits, in order of preference."""
    parameters = int(variant.params_b * 1e9)
    if hardware.cuda:
        candidates = [("hf", "bfloat16", "cuda"), ("hf", "8bit", "cuda"), ("hf", "4bit", "cuda")]
    else:
        # the transformers engine takes float32 on CPUs when it fits (bf16 is slow there)
        candidates = [("llamacpp", "q4_k_m", "cpu"), ("llamacpp", "q8_0", "cpu"),
                      ("hf", "float32", "cpu"), ("hf", "bfloat16", "cpu")]
    for engine, precision, device in candidates:
        if engine == "llamacpp" and not engines["llamacpp (llama-cpp-python)"]:
            continue
        if precision in ("8bit", "4bit") and not engines["bitsandbytes 4/8-bit"]:
            continue
        need = estimate(parameters, precision)
        total = need.total_bytes + (MMPROJ_BYTES if engine == "llamacpp" and variant.multimodal else 0)
        _, budget = budget_for(hardware, device)
        if total <= budget:
            speed = round(bandwidth_gbs * 1e9 / need.weight_bytes, 1) if device == "cpu" else None
            return {"fits": True, "engine": engine, "precision": precision, "device": device,
                    "memory_gib": round(total / GIB, 1), "decode_tok_s_ceiling": speed}
    smallest = estimate(parameters, "q4_k_m" if not hardware.cuda else "4bit")
    return {"fits": False, "engine": None, "precision": smallest.precision,
            "device": "cuda" if hardware.cuda else "cpu", "memory_gib": round(smallest.total_gib, 1),
            "decode_tok_s_ceiling": None}


def run(args: argparse.Namespace) -> int:
    from medgem.engines.llamacpp_native import cpu_features, describe_cpu_features

    hardware = detect_hardware()
    engines = {name: all(importlib.util.find_spec(module) is not None for module in modules)
               for name, modules in ENGINE_PACKAGES.items()}
    llama = llamacpp_report()
    # llama.cpp counts as an engine here only when it has been seen to run on this CPU.
    engines["llamacpp (llama-cpp-python)"] = bool(llama["runs_here"])
    bandwidth = measure_bandwidth_gbs()
    plans = {variant.key: plan(variant, hardware, engines, bandwidth) for variant in VARIANTS}
    if args.json:
        print(json.dumps({
            "cpu": hardware.cpu, "cores": hardware.cores, "cpu_native_bf16": hardware.cpu_bf16,
            "ram_total_gib": round(hardware.ram_total / GIB, 1),
            "ram_available_gib": round(hardware.ram_available / GIB, 1),
            "gpus": [{"name": g.name, "total_gib": round(g.total_bytes / GIB, 1),
                      "free_gib": round(g.free_bytes / GIB, 1)} for g in hardware.gpus],
            "cpu_features": cpu_features(), "llamacpp": llama,
            "memory_bandwidth_gbs": round(bandwidth, 1), "engines": engines, "variants": plans,
        }, indent=2))
        return 0
    print(f"CPU   {hardware.cpu} · {hardware.cores} cores · native bf16: "
          f"{'yes' if hardware.cpu_bf16 else 'no (transformers runs float32 here)'}")
    print(f"      {describe_cpu_features()}")
    print(f"RAM   {hardware.ram_total / GIB:.1f} GiB total, {hardware.ram_available / GIB:.1f} GiB available, "
          f"~{bandwidth:.0f} GB/s copy bandwidth")
    if hardware.gpus:
        for gpu in hardware.gpus:
            print(f"GPU   {gpu.index}: {gpu.name} · {gpu.total_bytes / GIB:.1f} GiB "
                  f"({gpu.free_bytes / GIB:.1f} free)")
    else:
        print("GPU   none (CUDA not available): bitsandbytes quantization is off; use GGUF")
    print("\nEngines")
    for name, ok in engines.items():
        print(f"  {'✓' if ok else '✗'} {name}")
    if llama["installed"]:
        print(f"\nllama.cpp  {llama['build']}")
        if llama["runs_here"]:
            print(f"  kernels here: {' '.join(llama['kernels']) or 'baseline x86-64'}; weight "
                  f"repacking {'on' if llama['weight_repacking'] else 'off (AMX CPU)'}")
            vision = llama["vision"]
            print(f"  image encoder: {vision['path']} ({vision['why']}; --vision to choose)")
        else:
            print(f"  ✗ {llama['detail']}")
    print("\nVariants on this machine")
    print(f"  {'variant':<12} {'fits':<5} {'engine':<9} {'precision':<10} {'memory':>9} {'decode estimate':>15}")
    for key, row in plans.items():
        ceiling = f"~{row['decode_tok_s_ceiling']} tok/s" if row["decode_tok_s_ceiling"] else "-"
        print(f"  {key:<12} {'yes' if row['fits'] else 'no':<5} {row['engine'] or '-':<9} "
              f"{row['precision']:<10} {row['memory_gib']:>6.1f} GiB {ceiling:>15}")
    if not hardware.cuda:
        if llama["installed"] and not llama["runs_here"]:
            print("\nllama.cpp is installed but does not run on this CPU: reinstall it with "
                  "scripts/install.sh (portable build); until then the transformers engine runs.")
        elif not engines["llamacpp (llama-cpp-python)"]:
            print("\nOn a CPU, llama.cpp with a Q4_K_M GGUF is several times faster than "
                  "transformers: pip install 'medgem[llamacpp]', then `medgem convert`.")
        else:
            print("\nRecommended here: `medgem convert CHECKPOINT --quant q4_k_m`, then run the "
                  ".gguf (engine llamacpp). Decode speed follows the ceilings above (measured "
                  "at 70-80% of them); an image question's first token waits on the vision "
                  "tower (~50 s for 4B on 2 cores), a follow-up on the same image under 1 s.")
    print(f"\nDecode ceilings: measured bandwidth {bandwidth:.0f} GB/s / weight bytes "
          "(every weight is read once per token). Image variants include the 0.85 GiB mmproj.")
    return 0
