"""How close medgem runs to this CPU's own limits, every figure a ratio to a limit measured in the
same run (issue 27), so the targets hold on every CPU kind (AVX2-only, AVX-512, AMX):

  1. the CPU's GEMM peak at the vision tower's shapes, fp32 and bf16 (bf16 only counts where
     the CPU has it natively: AVX512-BF16 or AMX; elsewhere it is emulated and never picked),
     and the int8 linear (``engines.int8.int8_linear``, fbgemm: its activation scaling and
     quantization included) as GFLOP/s-equivalent, the float FLOPs it replaces per second;
  2. the tower's attention alone at its shape: PyTorch's SDPA against the blocked-GEMM
     attention (``medgem.engines.attention``) and, on AVX512-BF16 CPUs, medgem's native bf16
     flash kernel (``medgem.engines.native``), GFLOP/s and share of the peak;
  3. the tower per vision path (PyTorch SDPA, PyTorch blocked, flash-bf16 where it runs, in fp32/bf16 and int8, and
     llama.cpp's clip, plus its f16 and Q8_0 matrices on random weights): seconds per image, GFLOP/s(-equivalent) and share of the float peak
     (int8 can pass 1.00: that is the point of it on CPUs without fast float matrix units);
  4. the first token for one image and for a CT volume (85 slices in the full run), with the
     estimate `medgem inspect` gives from the figures the engine recorded here;
  5. a volume's two stages, tower and prefill, on every core and on half of them: what running
     slice n's prefill beside slice n+1's tower (each on half the cores) would gain here;
  6. raw llama.cpp (its own batch loop; separate and unified KV) against medgem's batcher, whole
     answers (prefill + new tokens, new prompts each round, greedy) at 1/2/4/8 streams on the
     real Gemma 3 270M GGUF, with the ratio; the three kinds run in turn, pass after pass, so a
     drift in the machine's speed (one round's cells moved by 10-20% here) meets each of them;
  7. the GPU bullet: said to be skipped when no GPU is here.

    python benchmarks/cpu_speed.py --quick   # minutes: a 2-layer tower at the 4B width, 4 slices
    python benchmarks/cpu_speed.py           # the 4B shape (bench_llamacpp.py's GGUF, built once
                                             # if missing: ~30 min), 85 slices, 3 rounds
    python benchmarks/cpu_speed.py --slices 4 --skip batch   # the 4B shape in ~30 min on an
                                             # AVX2-only 2-core CPU (85 slices there: 1-1.5 h a path)
    python benchmarks/cpu_speed.py > benchmarks/results/cpu-speed-KIND.txt  # avx2, avx512, amx

Run it on a quiet machine: every figure here is a speed, and anything else on the cores changes it.
The header line names the CPU kind, the cores and the mode, so a saved output is its results file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from medgem.hardware import usable_cores

HERE = Path(__file__).resolve().parent
QUICK_FOLDER = Path("/tmp/medgem-bench-cpuspeed-quick")
FULL_CHECKPOINT = Path("/tmp/medgem-bench-4b")  # bench_llamacpp.py's
STREAMS = (1, 2, 4, 8)
TOPICS = ["pneumonia", "pulmonary embolism", "heart failure", "sepsis", "asthma", "stroke",
          "tuberculosis", "diabetic ketoacidosis", "appendicitis", "anaemia"]


# --- 1. the CPU -------------------------------------------------------------------------------


def cpu_kind() -> str:
    from medgem.hardware import cpu_flags

    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 (BF16)"
    if "avx512f" in flags:
        return "AVX-512 (no BF16)"
    return "AVX2-only" if "avx2" in flags else "pre-AVX2"


def gemm_peak(rows: int, repeats: int, native_bf16: bool) -> dict[str, float]:
    """GFLOP/s of the tower's three linear shapes (attention projections, MLP up, MLP down); for
    int8, GFLOP/s-equivalent of the W8A8 linear the int8 tower runs (quantizing included).
    Emulated bf16 (about 1 GFLOP/s) is timed once on 256 rows: at full size it alone took ten
    minutes, to show a figure nothing below uses."""
    import torch

    from medgem.engines.int8 import int8_linear, pack_int8
    from medgem.hardware import best_seconds

    out: dict[str, float] = {}
    with torch.inference_mode():
        for dtype in ("float32", "bfloat16", "int8"):
            m, times = (rows, repeats) if dtype != "bfloat16" or native_bf16 else (256, 1)
            flops = seconds = 0.0
            for k, n in ((1152, 1152), (1152, 4304), (4304, 1152)):
                if dtype == "int8":
                    a, packed = torch.randn(m, k), pack_int8(torch.randn(n, k))
                    seconds += best_seconds(partial(int8_linear, a, packed, None), times)
                else:
                    a = torch.randn(m, k).to(getattr(torch, dtype))
                    b = torch.randn(k, n).to(getattr(torch, dtype))
                    seconds += best_seconds(partial(torch.mm, a, b), times)
                flops += 2.0 * m * k * n
            out[dtype] = flops / seconds / 1e9
    return out


# --- 2/3. the tower -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerShape:
    layers: int
    tokens: int = 4096  # 896 px / 14 px patches, squared
    hidden: int = 1152
    intermediate: int = 4304
    heads: int = 16

    @property
    def linear_flops(self) -> float:
        per_layer = 2.0 * self.tokens * (4 * self.hidden ** 2 + 2 * self.hidden * self.intermediate)
        return per_layer * self.layers

    @property
    def attention_flops(self) -> float:
        return 4.0 * self.tokens ** 2 * self.hidden * self.layers

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops


def attention_alone(shape: TowerShape, dtypes: list[str], rows: int, repeats: int,
                    peak: float) -> list[tuple[str, str, float, float]]:
    """(dtype, kernel, GFLOP/s, share of peak) at the tower's attention shape."""
    from medgem.engines.attention import attention_flops, measure_attention

    flops = attention_flops(rows, shape.tokens, shape.heads, shape.hidden // shape.heads)
    rows_out = []
    for dtype in dtypes:
        times = measure_attention(shape.tokens, shape.heads, shape.hidden // shape.heads, dtype,
                                  query_rows=rows, repeats=repeats)
        for name, seconds in times.items():
            rows_out.append((dtype, name, flops / seconds / 1e9, flops / seconds / 1e9 / peak))
    return rows_out


def ensure_quick_model(layers: int) -> Path:
    """A checkpoint with the 4B's vision tower at 896 px cut to ``layers`` layers and a tiny text
    model, converted to an f16 GGUF + mmproj with `medgem convert`'s own code (once)."""
    folder = QUICK_FOLDER / f"tower-{layers}"
    gguf = folder.with_name(folder.name + "-gguf")
    if (gguf / "model.gguf").exists():
        return gguf
    from dataclasses import replace

    from medgem.demo.build import MEDGEMMA_4B, TINY, build_checkpoint, quiet_library_bars
    from medgem.engines.gguf.convert import convert_checkpoint

    shape = replace(TINY, hidden=256, intermediate=512, heads=2, kv_heads=1, head_dim=128,
                    vision_hidden=MEDGEMMA_4B.vision_hidden,
                    vision_intermediate=MEDGEMMA_4B.vision_intermediate, vision_layers=layers,
                    vision_heads=MEDGEMMA_4B.vision_heads, image_size=896, patch_size=14,
                    mm_tokens=256, context=32768)
    if not (folder / "config.json").exists():
        with quiet_library_bars():  # the table's lines, not transformers' "Writing model shards"
            build_checkpoint(folder, shape=shape, model_id="medgem-bench-cpuspeed-quick")
    convert_checkpoint(folder, "f16", gguf, progress=False)
    return gguf


def ensure_full_model() -> Path:
    sys.path.insert(0, str(HERE))
    from bench_llamacpp import ensure_checkpoint, ensure_gguf

    return ensure_gguf(ensure_checkpoint(FULL_CHECKPOINT), "q4_k_m")


def picture(seed: int) -> Any:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (896, 896, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def torch_tower_rows(mmproj: Path, shape: TowerShape, dtypes: list[str], blocked: str,
                     peak: float) -> list[tuple[str, float, float, float]]:
    """(path, s per image, GFLOP/s, share) for the PyTorch tower with SDPA and blocked attention,
    and medgem's native bf16 attention for the towers that may use it where this CPU runs it."""
    from medgem.engines.attention import BF16_ATTENTION_OK
    from medgem.engines.llamacpp.vision_torch import TorchTower
    from medgem.engines.native import FLASH, flash_available

    rows = []
    for dtype in dtypes:
        native = [FLASH] if dtype in BF16_ATTENTION_OK and flash_available() else []
        for attention in ("sdpa", blocked, *native):
            tower = TorchTower(mmproj, dtype=dtype, attention=attention)
            tower.embed(picture(0))  # warm-up
            began = time.perf_counter()
            tower.embed(picture(1))
            seconds = time.perf_counter() - began
            rows.append((f"torch {dtype} {attention}", seconds, shape.flops / seconds / 1e9,
                         shape.flops / seconds / 1e9 / peak))
            del tower
    return rows


def clip_q8_rows(layers: int) -> list[tuple[str, float]]:
    """llama.cpp's clip with the encoder's matrices in f16 and in Q8_0 (llama.cpp's int8 blocks;
    the MLP's down projection stays f16: 4304 is not whole 32-value blocks), random weights at
    the tower's shape, timed as ``vision_measure.measure_vision`` times the clip (the best of two
    encodes after a warm-up). Not a path the engine runs yet: it loads the mmproj `medgem convert` wrote (f16)."""
    from medgem.engines.gguf.write import write_random_mmproj
    from medgem.engines.llamacpp.probe import write_tiny_gguf
    from medgem.engines.llamacpp.vision_measure import clip_seconds

    threads = usable_cores()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        text = write_tiny_gguf(Path(folder) / "text.gguf")
        for matrices in ("F16", "Q8_0"):
            mmproj = write_random_mmproj(Path(folder) / f"{matrices}.gguf", layers=layers, matrices=matrices)
            rows.append((f"clip {matrices.lower()} (random weights)", clip_seconds(text, mmproj, threads)))
    return rows


def volume_request(images: int, tokens: int, first_seed: int = 100) -> Any:
    from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart

    parts: list[Any] = []
    for index in range(images):
        parts += [ImagePart(picture(first_seed + index)), TextPart(f"SLICE {index + 1}")]
    parts.append(TextPart("Describe the findings in this CT volume."))
    return Request((Message("user", tuple(parts)),), GenerationOptions(max_new_tokens=tokens))


def first_tokens(folder: Path, vision: str, slices: int, cache: Path, threads: int = 0) -> dict[str, Any]:
    """One image's and (``slices`` > 0) one volume's time to first token through the engine, and
    what `medgem inspect` estimates for the volume from the figures the first question recorded.
    No embedding cache, and the volume's pictures differ from the image's: every tower runs."""
    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.engines.llamacpp import speeds
    from medgem.resolve import resolve_checkpoint

    os.environ["MEDGEM_CACHE"] = str(cache)  # a fresh speeds store: only this run's figures
    checkpoint = resolve_checkpoint(folder)
    n_ctx = max(slices, 1) * 280 + 512  # a slice: 256 soft tokens, its image markers and "SLICE n"
    engine: Any = load_engine("llamacpp", checkpoint,
                              LlamaCppOptions(vision=vision, n_ctx=n_ctx, embed_cache_mb=0,
                                              threads=threads or None))
    try:
        one = list(engine.generate(volume_request(1, 1, first_seed=99)))[-1]
        result = {"image_ttft": one.timings.first_token_s, "image_vision": one.extra["vision_s"]}
        if slices:
            result["estimate"], measured = speeds.estimate_first_token(
                checkpoint.path, checkpoint.mmproj, slices, text_tokens=slices * 6 + 20, vision=vision)
            result["prefill_rate"] = measured.prefill_tokens_per_s if measured else None
            result["estimate_85"] = speeds.estimate_first_token(
                checkpoint.path, checkpoint.mmproj, 85, text_tokens=85 * 6 + 20, vision=vision)[0]
            volume = list(engine.generate(volume_request(slices, 1)))[-1]
            result.update(volume_ttft=volume.timings.first_token_s, volume_vision=volume.extra["vision_s"])
    finally:
        engine.close()
    return result


def overlap_rows(folder: Path, vision: str, cores: int) -> list[tuple[int, float, float]]:
    """A slice's tower and its prefill (one image's first token less its tower: the soft tokens
    and the text) on every core and on half of them: what overlapping slice n's prefill with
    slice n+1's tower, each stage on its own half of the cores, could gain."""
    rows = []
    for threads in sorted({cores, max(1, cores // 2)}, reverse=True):
        with tempfile.TemporaryDirectory() as cache:
            result = first_tokens(folder, vision, 0, Path(cache), threads=threads)
        rows.append((threads, result["image_vision"], result["image_ttft"] - result["image_vision"]))
    return rows


# --- 6. batching: raw llama.cpp against medgem ---------------------------------------------------


def prompts(round_index: int, count: int) -> list[str]:
    return [f"Question {round_index}.{i}: the first-line workup of {TOPICS[(round_index + i) % len(TOPICS)]} "
            "in an adult, the findings that change management, and when to escalate care, is"
            for i in range(count)]


def raw_llamacpp(gguf: Path, streams: int, tokens: int, rounds: int, unified: bool,
                 n_ctx: int) -> float:
    """Aggregate tok/s of llama.cpp's own loop, llama-server's way: every new prompt prefilled in
    one llama_decode, then one batch per step with every stream's next token."""
    from medgem.engines.llamacpp.native import (
        import_llama_cpp,
        llama_context_params,
        llama_model_params,
    )

    lib, _ = import_llama_cpp()
    model = lib.llama_model_load_from_file(str(gguf).encode(), llama_model_params(lib))
    threads = usable_cores()
    params = llama_context_params(lib, n_ctx * streams, 512, threads, streams, unified=unified)
    ctx = lib.llama_init_from_model(model, params)
    vocab = lib.llama_model_get_vocab(model)
    sampler = lib.llama_sampler_init_greedy()
    batch = lib.llama_batch_init(512, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        for index, (token, position, seq, logits) in enumerate(entries):
            batch.token[index], batch.pos[index] = token, position
            batch.n_seq_id[index], batch.seq_id[index][0], batch.logits[index] = 1, seq, logits
        batch.n_tokens = len(entries)
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def tokenize(text: str) -> list[int]:
        buffer = (lib.llama_token * 1024)()
        count = lib.llama_tokenize(vocab, text.encode(), len(text.encode()), buffer, 1024, True, True)
        return list(buffer[:count])

    rates = []
    try:
        for round_index in range(rounds + 1):  # round 0 warms up (compute buffers, threads)
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
            texts = prompts(round_index + 1000 * streams, streams)
            ids = [tokenize(t) for t in texts]
            began = time.perf_counter()
            entries = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(ids)
                       for pos, tok in enumerate(p)]
            decode(entries)
            logit_rows = [i for i, e in enumerate(entries) if e[3]]
            nxt = [int(lib.llama_sampler_sample(sampler, ctx, row)) for row in logit_rows]
            positions = [len(p) for p in ids]
            live = list(range(streams))
            made = streams
            for _ in range(tokens - 1):
                live = [s for s in live if not lib.llama_vocab_is_eog(vocab, nxt[s])]
                if not live:
                    break
                decode([(nxt[s], positions[s], s, True) for s in live])
                for row, s in enumerate(live):
                    positions[s] += 1
                    nxt[s] = int(lib.llama_sampler_sample(sampler, ctx, row))
                made += len(live)
            rates.append(made / (time.perf_counter() - began))
    finally:
        lib.llama_batch_free(batch)
        lib.llama_sampler_free(sampler)
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    return statistics.median(rates[1:])


def medgem_batched(gguf: Path, streams: int, tokens: int, rounds: int, n_ctx: int) -> float:
    """Aggregate tok/s of the same work through medgem's batcher (threads, as the server and
    `ask_many` drive it), the engine's defaults otherwise."""
    import threading

    from medgem.api import MedGemma
    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.engines.base import Finished
    from medgem.request import GenerationOptions, Message, Request, TextPart
    from medgem.resolve import resolve_checkpoint

    engine = load_engine("llamacpp", resolve_checkpoint(gguf), LlamaCppOptions(n_ctx=n_ctx, parallel=streams))
    model = MedGemma(engine, parallel=streams)
    rates = []
    try:
        for round_index in range(rounds + 1):  # round 0 warms up, as above
            made: list[int] = []
            lock = threading.Lock()

            def one(text: str, made: list[int] = made, lock: Any = lock) -> None:
                request = Request((Message("user", (TextPart(text),)),),
                                  GenerationOptions(max_new_tokens=tokens), template="completion")
                for event in model.batcher.generate(model.engine.prepare(request)):
                    if isinstance(event, Finished):
                        with lock:
                            made.append(event.usage.completion_tokens)

            workers = [threading.Thread(target=one, args=(t,))
                       for t in prompts(round_index + 1000 * streams, streams)]
            began = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            rates.append(sum(made) / (time.perf_counter() - began))
    finally:
        model.close()
    return statistics.median(rates[1:])


def in_child(kind: str, streams: int, tokens: int, rounds: int) -> float:
    """One batching measurement in a fresh process: what ran before in this one (another model's
    load and free, llama.cpp's and torch's thread pools) moved the figures here by up to 6x, in
    either direction, so raw and medgem each start from the same clean state."""
    import json
    import subprocess

    command = [sys.executable, __file__, "--child", kind, str(streams), str(tokens), str(rounds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return float(json.loads(lines[-1][7:]))


def child(kind: str, streams: int, tokens: int, rounds: int) -> None:
    import json

    from medgem.demo.build import demo_gguf_path

    gguf = demo_gguf_path()
    if kind == "medgem":
        rate = medgem_batched(gguf, streams, tokens, rounds, 512)
    else:
        rate = raw_llamacpp(gguf, streams, tokens, rounds, kind == "unified", 512)
    print("RESULT " + json.dumps(rate))


# --- the run ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="minutes: a 2-layer tower, 4 slices, 1 round")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: tower,first,overlap,batch")
    parser.add_argument("--layers", type=int, default=2,
                        help="with --quick: the tower's layers (27: the whole 4B tower at 896 px beside "
                             "a tiny text model, so the first token is the tower's alone)")
    parser.add_argument("--rounds", type=int, default=0, help="batching rounds (default 1 quick, 3 full)")
    parser.add_argument("--passes", type=int, default=0,
                        help="batching: times each cell runs, the kinds in turn (default 2 quick, 3 full)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per stream")
    parser.add_argument("--slices", type=int, default=0,
                        help="the volume's slices (default 4 quick, 85 full; a full-shape slice "
                             "takes 40-60 s on an AVX2-only 2-core CPU)")
    parser.add_argument("--vision", default="llamacpp,torch",
                        help="the vision paths whose first tokens to time (comma-separated; an 85-slice "
                             "volume takes 1-1.5 h a path on an AVX2-only 2-core CPU)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], *(int(x) for x in args.child[1:]))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    unknown = set(filter(None, args.vision.split(","))) - {"llamacpp", "torch"}
    if unknown:
        parser.error(f"unknown vision path {', '.join(sorted(unknown))}: choose llamacpp, torch")
    import torch

    from medgem.engines.llamacpp.kernels import cpu_kind as cpu_units
    from medgem.hardware import cpu_has_native_bf16

    cores = usable_cores()
    slices = args.slices or (4 if args.quick else 85)
    mode = (f"quick ({args.layers}-layer tower, tiny text model, {slices} slices, 1 round)" if args.quick
            else f"full (4B shape, {slices} slices)")
    print(f"# cpu_speed.py, {cpu_kind()}: {cpu_units()}, {cores} cores, {mode}, torch "
          f"{torch.__version__}, {date.today().isoformat()}", flush=True)
    native_bf16 = cpu_has_native_bf16()
    dtypes = ["float32", "bfloat16"] if native_bf16 else ["float32"]
    repeats = 2 if args.quick else 5

    peaks = gemm_peak(1024 if args.quick else 4096, repeats, native_bf16)
    peak = max(peaks["float32"], peaks["bfloat16"] if native_bf16 else 0.0)
    print("\n## GEMM peak at the tower's linear shapes (torch.mm, best of runs)")
    print(f"fp32 {peaks['float32']:.0f} GFLOP/s | bf16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"({'native' if native_bf16 else 'EMULATED: never used here'}) | peak used below: {peak:.0f}")
    print(f"int8 (fbgemm) {peaks['int8']:.0f} GFLOP/s-equivalent ({peaks['int8'] / peak:.2f} x the float "
          "peak; weights per channel, activations per token)")

    shape = TowerShape(layers=args.layers if args.quick else 27)
    blocked = "blocked-q128-kvall"
    if "tower" not in skip:
        print(f"\n## Tower attention alone (4,096 patches x 16 heads x 72, {256 if args.quick else 1024} "
              "query rows, every key)")
        print(f"{'dtype':<9} | {'kernel':<20} | {'GFLOP/s':>8} | {'x peak':>6}")
        rows = attention_alone(shape, dtypes, 256 if args.quick else 1024, repeats, peak)
        for dtype, name, gflops, share in rows:
            print(f"{dtype:<9} | {name:<20} | {gflops:>8.1f} | {share:>6.2f}")
        best_dtype = dtypes[-1]
        blocked = max((r for r in rows if r[0] == best_dtype and r[1].startswith("blocked")), key=lambda r: r[2])[1]

    if not {"tower", "first", "overlap"} <= skip:  # only the batching rows need no tower checkpoint
        folder = ensure_quick_model(args.layers) if args.quick else ensure_full_model()
        mmproj = folder / "mmproj.gguf"
    if "tower" not in skip:
        print(f"\n## The tower per vision path ({shape.layers} layers at 896 px: "
              f"{shape.flops / 1e12:.2f} TFLOP, attention {shape.attention_flops / shape.flops:.0%})")
        print(f"{'path':<32} | {'s/image':>8} | {'GFLOP/s':>8} | {'x peak':>6}")
        for name, seconds, gflops, share in torch_tower_rows(mmproj, shape, [*dtypes, "int8"], blocked, peak):
            print(f"{name:<32} | {seconds:>8.2f} | {gflops:>8.1f} | {share:>6.2f}")
        with tempfile.TemporaryDirectory() as cache:
            clip = first_tokens(folder, "llamacpp", 0, Path(cache))
        seconds = clip["image_vision"]
        print(f"{'llama.cpp clip (f16, flash attn)':<32} | {seconds:>8.2f} | "
              f"{shape.flops / seconds / 1e9:>8.1f} | {shape.flops / seconds / 1e9 / peak:>6.2f}")
        for name, seconds in clip_q8_rows(shape.layers):
            print(f"{name:<32} | {seconds:>8.2f} | {shape.flops / seconds / 1e9:>8.1f} | "
                  f"{shape.flops / seconds / 1e9 / peak:>6.2f}")
        print(f"floor at the float peak: {shape.flops / peak / 1e9:.2f} s/image (int8 rows: attention "
              "in fp32, or bf16 in flash-bf16 rows, the linear layers in int8; GFLOP/s there are "
              "float-equivalent)")

    if "first" not in skip:
        print(f"\n## First token: one image, and a volume of {slices} slices (inspect's estimate "
              "from the figures the first question recorded)")
        print(f"{'vision path':<10} | {'image s':>8} | {'x floor':>7} | {'volume s':>9} | {'tower s':>8} | "
              f"{'estimate s':>10} | {'estimate/measured':>17}")
        estimates_85: dict[str, float] = {}
        for vision in filter(None, args.vision.split(",")):
            with tempfile.TemporaryDirectory() as cache:
                result = first_tokens(folder, vision, slices, Path(cache))
            estimate, rate = result["estimate"], result["prefill_rate"]
            ratio = estimate / result["volume_ttft"] if estimate else float("nan")
            # the floor: the tower's FLOPs at the GEMM peak + the prompt (256 soft tokens, ~30 text)
            # at the prefill rate the engine measured here
            floor = shape.flops / peak / 1e9 + (256 + 30) / rate if rate else float("nan")
            print(f"{vision:<10} | {result['image_ttft']:>8.2f} | {result['image_ttft'] / floor:>7.2f} | "
                  f"{result['volume_ttft']:>9.2f} | {result['volume_vision']:>8.2f} | "
                  f"{estimate or float('nan'):>10.2f} | {ratio:>17.2f}")
            if slices != 85 and result.get("estimate_85"):
                estimates_85[vision] = result["estimate_85"]
        print("targets: image first token <= 1.3 x floor (tower FLOPs at the GEMM peak + prefill at the "
              "measured rate); volume estimate within 20% of measured")
        if estimates_85:
            print("inspect's estimate for an 85-slice volume from the same figures (not run here): " +
                  ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in estimates_85.items()))

    if "overlap" not in skip and cores > 1:
        vision = args.vision.split(",")[-1]
        print(f"\n## A volume's two stages on shared cores ({vision} tower): slice n's prefill beside "
              "slice n+1's tower, each on half the cores, against both in turn on every core")
        print(f"{'threads':>7} | {'tower s/slice':>13} | {'prefill s/slice':>15}")
        rows = overlap_rows(folder, vision, cores)
        for threads, tower, prefill in rows:
            print(f"{threads:>7} | {tower:>13.2f} | {prefill:>15.2f}", flush=True)
        (_, tower_all, prefill_all), (_, tower_half, prefill_half) = rows[0], rows[-1]
        serial, piped = tower_all + prefill_all, max(tower_half, prefill_half)
        print(f"in turn on {cores} cores: {serial:.2f} s a slice | overlapped on {cores // 2} each: "
              f"{piped:.2f} s a slice (the slower stage) | overlapped / in turn {piped / serial:.2f} "
              "(below 1.00 overlapping would pay here)")

    if "batch" not in skip:
        from medgem.demo.build import demo_gguf_path

        gguf = demo_gguf_path()
        rounds = args.rounds or (1 if args.quick else 3)
        passes = args.passes or (2 if args.quick else 3)
        tokens = min(args.tokens, 16) if args.quick else args.tokens
        print(f"\n## Batched whole answers on {gguf.name} (prefill + {tokens} tokens per stream, new "
              f"prompts each round, greedy, median of {rounds} round(s) after a warm-up round, each "
              f"cell in its own process; the three kinds run in turn, {passes} passes, each kind's "
              "median shown), aggregate tok/s")
        print(f"{'streams':>7} | {'raw separate KV':>15} | {'raw unified KV':>14} | {'medgem':>7} | "
              f"{'medgem / raw best':>17} | {'pass ratios':>17}")
        for streams in STREAMS:
            cells: dict[str, list[float]] = {"separate": [], "unified": [], "medgem": []}
            for _ in range(passes):  # in turn, so a drift in the machine's speed meets every kind
                for kind, rates in cells.items():
                    rates.append(in_child(kind, streams, tokens, rounds))
            separate, unified, ours = (statistics.median(cells[k]) for k in ("separate", "unified", "medgem"))
            ratios = [m / max(s, u) for s, u, m in zip(cells["separate"], cells["unified"], cells["medgem"], strict=True)]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(f"{streams:>7} | {separate:>15.1f} | {unified:>14.1f} | {ours:>7.1f} | "
                  f"{ours / max(separate, unified):>17.2f} | {spread:>17}", flush=True)
        print("target: medgem >= 0.95 x raw llama.cpp's best at every stream count")

    print("\n## GPU")
    if torch.cuda.is_available():
        print(f"{torch.cuda.get_device_name(0)}: run benchmarks/gpu_check.py (static cache / CUDA "
              "graphs against eager, 1/8/64 streams)")
    else:
        print("no GPU available in this run: the transformers static-cache / CUDA-graph rows were not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
