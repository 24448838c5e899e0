"""`medgem doctor`: this machine, the installed engines, and how each variant would run here."""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import asdict, dataclass
from typing import Any

from medgem.cli.common import llamacpp_settings
from medgem.errors import EngineUnavailableError
from medgem.hardware import GIB, Hardware, detect_hardware
from medgem.memory import budget_for, estimate
from medgem.request.variants import VARIANTS, Variant

ENGINE_PACKAGES = {
    "hf (transformers)": ("transformers", "torch"), "llamacpp (llama-cpp-python)": ("llama_cpp",),
    "remote (OpenAI-compatible, e.g. vLLM)": ("openai",), "bitsandbytes 4/8-bit": ("bitsandbytes",),
}
# The GGUF vision projector (SigLIP tower in f16) that image variants load beside the model.
MMPROJ_BYTES = int(0.85 * GIB)


@dataclass(frozen=True)
class Measured:
    """A figure a benchmark measured: what, how much, and the results file that holds it."""

    what: str
    value: float
    unit: str
    source: str


#: The machine the figures below were measured on, and its copy bandwidth as this command
#: measures it (`measure_bandwidth_gbs`), so a decode figure becomes a share of that machine's
#: ceiling and the share is applied to this machine's ceiling.
REFERENCE_MACHINE = "AMD EPYC Zen 5 (AVX-512 BF16, no AMX), 2 cores"
REFERENCE_BANDWIDTH_GBS = 42.0
REFERENCE_PARAMS = 4_300_000_000  # MedGemma-4B-shaped weights (text + vision)
#: (engine, precision) -> decode of one stream on the reference machine.
DECODE_MEASURED: dict[tuple[str, str], Measured] = {
    ("llamacpp", "q4_k_m"): Measured("4B-shaped Q4_K_M decode, one stream", 13.75, "tok/s",
                                     "benchmarks/results/cpu-zen5-batching.txt"),
    ("hf", "bfloat16"): Measured("4B-shaped bf16 decode, transformers direct", 1.17, "tok/s",
                                 "benchmarks/results/cpu-4b-bf16-transformers-paths.txt"),
}
VISION_MEASURED = Measured("one 896-px image through llama.cpp's clip (4B vision tower)", 19.36,
                           "s", "benchmarks/results/cpu-zen5-vision.txt")
SAME_IMAGE_MEASURED = Measured("first token of a follow-up on the same image", 0.32, "s",
                               "benchmarks/results/cpu-zen5-vision.txt")
NEW_CONVERSATION_MEASURED = Measured("first token of the same image in a new conversation "
                                     "(embedding cache)", 4.05, "s",
                                     "benchmarks/results/cpu-zen5-vision.txt")


def measured_share(engine: str, precision: str) -> tuple[float, Measured] | None:
    """The share of the bandwidth ceiling a benchmark reached for this engine and precision on
    the reference machine, with the measurement; None when it was not measured."""
    measured = DECODE_MEASURED.get((engine, precision))
    if measured is None:
        return None
    weight_bytes = estimate(REFERENCE_PARAMS, precision).weight_bytes
    ceiling = REFERENCE_BANDWIDTH_GBS * 1e9 / weight_bytes
    return measured.value / ceiling, measured


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
    parser.add_argument("--measure", action="store_true",
                        help="measure once where this CPU runs the vision tower fastest (llama.cpp's "
                             "clip or PyTorch, and PyTorch's precision: float32, bfloat16 or int8); "
                             "about a minute on 2 cores, kept for every later run")
    parser.set_defaults(func=run)


def measure_vision(asked: str | None) -> tuple[str, str]:
    """(path, why) from ``vision_measure.measure_vision``'s one-time measurement, taken in a child
    process: it runs llama.cpp's clip, and native code runs only where a crash costs one line
    (the probe has shown llama.cpp runs on this CPU before this is called).

    Raises:
        EngineUnavailableError: the child failed; its last line says why.
    """
    import subprocess
    import sys

    code = ("import json, sys; from medgem.engines.llamacpp.vision_measure import measure_vision; "
            "print(json.dumps(measure_vision(sys.argv[1] or None)))")
    done = subprocess.run([sys.executable, "-c", code, asked or ""], capture_output=True, text=True,
                          check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise EngineUnavailableError(f"the vision measurement failed: {last}",
                                     "run `medgem doctor` to see whether llama.cpp runs here")
    path, why = json.loads(lines[-1])
    return str(path), str(why)


def llamacpp_report() -> dict[str, Any]:
    """Whether llama.cpp runs on this CPU (proved in a child process) and with which kernels."""
    from medgem.engines.llamacpp.kernels import choose_vision
    from medgem.engines.llamacpp.native import cpu_variants, use_extra_buffers
    from medgem.engines.llamacpp.probe import probe
    from medgem.engines.native import flash_status

    if importlib.util.find_spec("llama_cpp") is None:
        return {"installed": False, "runs_here": False}
    settings = llamacpp_settings()
    variants = cpu_variants()
    result = probe(cpu_variant=settings.cpu_variant, repack=settings.repack)
    compiled = [name for name, value in result.kernels.items() if value == "1"]
    return {"installed": True,
            "build": (f"runtime CPU dispatch ({len(variants)} CPU variants)" if variants
                      else "single build for one CPU (not portable)"),
            "variants": variants, "runs_here": result.ok,
            "detail": result.message() if not result.ok else "", "kernels": compiled,
            "weight_repacking": use_extra_buffers(repack=settings.repack),
            # what the engine measured here (doctor runs no llama.cpp in this process)
            "vision": dict(zip(("path", "why"), choose_vision(settings.vision), strict=True)),
            # medgem's own AVX512-BF16 attention for the PyTorch tower: "ok" or why not here
            "native_attention": flash_status()}


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
            ceiling = bandwidth_gbs * 1e9 / need.weight_bytes if device == "cpu" else None
            share = measured_share(engine, precision) if ceiling is not None else None
            return {"fits": True, "engine": engine, "precision": precision, "device": device,
                    "memory_gib": round(total / GIB, 1),
                    "decode_tok_s_ceiling": round(ceiling, 1) if ceiling is not None else None,
                    "decode_tok_s_expected": round(ceiling * share[0], 1) if share and ceiling
                    else None,
                    "decode_share_measured": round(share[0], 2) if share else None,
                    "decode_source": share[1].source if share else None}
    smallest = estimate(parameters, "q4_k_m" if not hardware.cuda else "4bit")
    return {"fits": False, "engine": None, "precision": smallest.precision,
            "device": "cuda" if hardware.cuda else "cpu", "memory_gib": round(smallest.total_gib, 1),
            "decode_tok_s_ceiling": None, "decode_tok_s_expected": None,
            "decode_share_measured": None, "decode_source": None}


def _measured_lines(plans: dict[str, dict[str, Any]]) -> list[str]:
    """Where 'expected' comes from, in the table's own numbers, and the image wait."""
    lines = [f"Expected: the ceiling times the share a benchmark reached on {REFERENCE_MACHINE} "
             f"(~{REFERENCE_BANDWIDTH_GBS:.0f} GB/s):"]
    shown: set[str] = set()
    for key, row in plans.items():
        if row["decode_tok_s_expected"] is None or row["decode_source"] in shown:
            continue
        shown.add(row["decode_source"])
        lines.append(f"  {key} on {row['engine']} {row['precision']}: {row['decode_tok_s_ceiling']} "
                     f"tok/s x {row['decode_share_measured']:.0%} = ~{row['decode_tok_s_expected']} "
                     f"tok/s ({row['decode_source']})")
    if len(lines) == 1:
        lines.append("  nothing measured for the engines and precisions chosen here")
    if any(row["engine"] == "llamacpp" for row in plans.values()):
        lines.append(f"An image question's first token waits on the vision tower: "
                     f"{VISION_MEASURED.value:.1f} s for the 4B image encoder there, fewer cores "
                     f"take longer; a follow-up on the same image {SAME_IMAGE_MEASURED.value:.1f} s, "
                     f"the same image in a new conversation {NEW_CONVERSATION_MEASURED.value:.1f} s "
                     f"({VISION_MEASURED.source}).")
    return lines


def measured_here() -> list[dict[str, object]]:
    """What the llama.cpp engine measured on this CPU (the speeds store): per model file,
    projector, vision path and thread count."""
    from medgem.engines.llamacpp import speeds
    from medgem.engines.llamacpp.probe import cpu_name

    rows: list[dict[str, object]] = []
    for key in speeds.measured_keys():
        model, mmproj, vision, threads, cpu = (key.split("|") + [""] * 5)[:5]
        found = speeds.lookup(key)
        if cpu != cpu_name() or found is None:
            continue
        rows.append({"model": model.split(":")[0], "projector": mmproj.split(":")[0], "vision": vision,
                     "threads": threads.rstrip("t"), "vision_s_per_image": found.vision_s_per_image,
                     "prefill_tokens_per_s": found.prefill_tokens_per_s, "runs": found.runs,
                     "date": found.measured_on})
    return rows


def run(args: argparse.Namespace) -> int:
    from medgem.engines.llamacpp.native import cpu_features, describe_cpu_features

    hardware = detect_hardware()
    engines = {name: all(importlib.util.find_spec(module) is not None for module in modules)
               for name, modules in ENGINE_PACKAGES.items()}
    llama = llamacpp_report()
    if args.measure and llama["installed"] and llama["runs_here"]:
        if not args.json:
            print("measuring the vision tower here once (llama.cpp's clip and PyTorch; about a "
                  "minute on 2 cores) ...", flush=True)
        path, why = measure_vision(llamacpp_settings().vision)  # the setting it honours
        llama["vision"] = {"path": path, "why": why}
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
            "measured_on": {"machine": REFERENCE_MACHINE, "bandwidth_gbs": REFERENCE_BANDWIDTH_GBS,
                            "figures": [asdict(m) for m in (*DECODE_MEASURED.values(),
                                                            VISION_MEASURED, SAME_IMAGE_MEASURED,
                                                            NEW_CONVERSATION_MEASURED)]},
            "measured_here": measured_here(),
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
            native = llama["native_attention"]
            attention = ("medgem's flash-bf16 kernel runs here (a candidate for bf16 and int8 towers)"
                         if native == "ok" else f"PyTorch's (medgem's flash-bf16 kernel: {native})")
            print(f"  PyTorch tower's attention: {attention}")
        else:
            print(f"  ✗ {llama['detail']}")
    print("\nVariants on this machine")
    print(f"  {'variant':<12} {'fits':<5} {'engine':<9} {'precision':<10} {'memory':>9} "
          f"{'decode ceiling':>15} {'expected':>13}")
    for key, row in plans.items():
        ceiling = f"{row['decode_tok_s_ceiling']} tok/s" if row["decode_tok_s_ceiling"] else "-"
        expected = f"~{row['decode_tok_s_expected']} tok/s" if row["decode_tok_s_expected"] else "-"
        print(f"  {key:<12} {'yes' if row['fits'] else 'no':<5} {row['engine'] or '-':<9} "
              f"{row['precision']:<10} {row['memory_gib']:>6.1f} GiB {ceiling:>15} {expected:>13}")
    print(f"\nDecode ceiling: this machine's copy bandwidth ({bandwidth:.0f} GB/s) / weight bytes "
          "(every weight is read once per token). Image variants include the 0.85 GiB mmproj.")
    for line in _measured_lines(plans):
        print(line)
    here = measured_here()
    if here:
        print("\nMeasured on this machine by medgem's own runs (what `medgem inspect --model` "
              "estimates from)")
        for row in here:
            tower = (f"{row['vision_s_per_image']:.1f} s/image ({row['vision']})"
                     if row["vision_s_per_image"] is not None else "no image yet")
            prefill = (f"prefill {row['prefill_tokens_per_s']:.0f} tok/s"
                       if row["prefill_tokens_per_s"] is not None else "prefill not timed yet")
            print(f"  {row['model']}: {tower}, {prefill}, {row['threads']} threads "
                  f"({row['runs']} run(s), {row['date']})")
    if not hardware.cuda:
        if llama["installed"] and not llama["runs_here"]:
            print("\nllama.cpp is installed but does not run on this CPU: reinstall it with "
                  "scripts/install.sh (portable build); until then the transformers engine runs.")
        elif not engines["llamacpp (llama-cpp-python)"]:
            print("\nOn a CPU, llama.cpp with a Q4_K_M GGUF is several times faster than "
                  "transformers: pip install 'medgem[llamacpp]', then `medgem convert`.")
        else:
            print("\nRecommended here: `medgem convert CHECKPOINT --quant q4_k_m`, then run the "
                  ".gguf (engine llamacpp).")
    return 0
