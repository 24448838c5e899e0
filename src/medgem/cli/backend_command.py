"""`medgem backend-command VARIANT`: the `vllm serve` line for a MedGemma variant, for the GPU
servers a medgem front spreads requests over (`medgem serve --backend URL ...`)."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from medgem.errors import InputError
from medgem.inputs.options import ImagingOptions
from medgem.request.variants import VARIANTS, find_variant

IMAGE_TOKENS = 256  # soft tokens per image in Gemma 3's vision encoder
# The most images one prompt of the variant needs: a CT/MR volume is 85 slices, a slide up to
# 125 patches (MedGemma 1.5); the other image models take a few pictures (a prior, a comparison).
SLIDE_PATCHES = ImagingOptions.max_patches
FEW_IMAGES = 16


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backend-command", help="print the `vllm serve` command for a MedGemma variant",
        description="Print the vLLM command that serves a MedGemma variant with the settings that "
        "matter for it (context for its largest inputs, images per prompt, dtype, tensor "
        "parallelism), and the medgem front that uses it.",
    )
    parser.add_argument("variant", help=f"one of: {', '.join(v.key for v in VARIANTS)}")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs for tensor parallelism (default 1)")
    parser.add_argument("--port", type=int, default=8000, help="the backend's port (default 8000)")
    parser.set_defaults(func=run)


def vllm_command(variant_key: str, gpus: int = 1, port: int = 8000) -> list[str]:
    """The vllm serve arguments for a variant.

    Raises:
        InputError: an unknown variant or GPU count.
    """
    variant = find_variant(variant_key)
    if variant is None:
        raise InputError(f"unknown variant '{variant_key}'",
                         f"use one of: {', '.join(v.key for v in VARIANTS)}")
    if gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {gpus}")
    images = 0
    if variant.multimodal:
        images = SLIDE_PATCHES if "WSI" in variant.inputs else FEW_IMAGES
    # Room for the largest input plus the prompt and the answer budget, in 4k steps.
    need = images * IMAGE_TOKENS + 2048 + variant.max_output_tokens
    context = min(variant.context_length, -(-need // 4096) * 4096)
    command = ["vllm", "serve", variant.hf_id, "--served-model-name", variant.hf_id.split("/")[-1],
               "--dtype", "bfloat16", "--max-model-len", str(context), "--port", str(port)]
    if images:
        command += ["--limit-mm-per-prompt", json.dumps({"image": images})]
    if gpus > 1:
        command += ["--tensor-parallel-size", str(gpus)]
    return command


def run(args: argparse.Namespace) -> int:
    command = vllm_command(args.variant, args.gpus, args.port)
    name = command[command.index("--served-model-name") + 1]
    print(shlex.join(command))
    print(f"# then, in front of one or more of them:\n"
          f"# medgem serve --model {name} --backend http://HOST1:{args.port}/v1 "
          f"--backend http://HOST2:{args.port}/v1")
    return 0
