"""Which llama.cpp build and kernels to run: portable vs native, AVX2 vs best, repacking on/off.

On the MedGemma-4B-shaped Q4_K_M (random weights, made once by bench_llamacpp.py's helpers),
each row runs in its own child process: load, a 200-token prefill, 32 decoded tokens.

  - native: a llama-cpp-python wheel built for this CPU only (-march=native), the baseline;
  - portable: the wheel scripts/install.sh builds (every CPU level, the best loaded at run time);
  - portable forced to the haswell backend: what an AVX2-only CPU runs;
  - each with llama.cpp's weight repacking (extra buffer types) on and off.

    python benchmarks/bench_llamacpp_builds.py --native-wheel native.whl
    python benchmarks/bench_llamacpp_builds.py --time-builds llama_cpp_python-0.3.36.tar.gz

``--time-builds SDIST`` builds both wheels first (timed, one after the other) and uses them.
Run it on a quiet machine: llama.cpp's threads collapse when another process takes a core.
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
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_llamacpp import ensure_checkpoint, ensure_gguf, measure_text, table

PORTABLE = ("-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON "
            "-DGGML_BACKEND_DIR:STRING=llama_cpp/lib")
NATIVE = "-DGGML_NATIVE=ON"


def child(folder: Path, new_tokens: int) -> dict[str, Any]:
    from medgem.engines import LlamaCppOptions, load_engine
    from medgem.engines.llamacpp.native import cpu_variants, kernel_features, use_extra_buffers
    from medgem.resolve import resolve_checkpoint

    began = time.perf_counter()
    engine: Any = load_engine("llamacpp", resolve_checkpoint(folder / "model.gguf"), LlamaCppOptions())
    result = measure_text(engine, new_tokens, time.perf_counter() - began)
    engine.close()
    kernels = kernel_features()
    result.update({
        "kernels": " ".join(k for k, v in kernels.items() if v == "1" and k not in
                            ("SSE3", "SSSE3", "LLAMAFILE", "OPENMP", "REPACK")),
        "repack": use_extra_buffers(), "dispatch": bool(cpu_variants()),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    })
    return result


def run_row(folder: Path, new_tokens: int, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(folder), "--new-tokens", str(new_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, **env})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return dict(json.loads(lines[-1][7:]))


def build_wheel(sdist: Path, cmake_args: str, out: Path) -> tuple[Path, float]:
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
                    "-w", str(out), str(sdist)], check=True, env={**os.environ, "CMAKE_ARGS": cmake_args})
    return next(out.glob("llama_cpp_python-*.whl")), time.perf_counter() - began


def unpack(wheel: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="medgem-wheel-"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    for library in (target / "llama_cpp" / "lib").glob("*.so*"):
        library.chmod(0o755)
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/medgem-bench-4b"))
    parser.add_argument("--native-wheel", type=Path, help="a llama-cpp-python wheel built -march=native")
    parser.add_argument("--portable-wheel", type=Path, help="default: the installed llama-cpp-python")
    parser.add_argument("--time-builds", type=Path, metavar="SDIST",
                        help="build both wheels from this llama-cpp-python sdist, timed")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.new_tokens)))
        return
    build_s: dict[str, float] = {}
    if args.time_builds:
        work = Path(tempfile.mkdtemp(prefix="medgem-builds-"))
        args.native_wheel, build_s["native"] = build_wheel(args.time_builds, NATIVE, work / "native")
        args.portable_wheel, build_s["portable"] = build_wheel(args.time_builds, PORTABLE, work / "portable")
    folder = ensure_gguf(ensure_checkpoint(args.dir), "q4_k_m")
    from medgem.hardware import cpu_flags

    flags = cpu_flags()
    print("CPU flags that matter:", " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))))
    print("cores:", len(os.sched_getaffinity(0)), flush=True)
    portable_path = {"PYTHONPATH": str(unpack(args.portable_wheel))} if args.portable_wheel else {}
    rows: list[tuple[str, dict[str, str]]] = []
    if args.native_wheel:
        rows.append(("native build", {"PYTHONPATH": str(unpack(args.native_wheel))}))
    fresh = {"MEDGEM_CACHE": tempfile.mkdtemp(prefix="medgem-probe-")}  # every row probes anew
    rows += [
        ("portable, best backend", {**portable_path}),
        ("portable, best, repack on", {**portable_path, "MEDGEM_LLAMA_REPACK": "on"}),
        ("portable, best, repack off", {**portable_path, "MEDGEM_LLAMA_REPACK": "off"}),
        ("portable, AVX2 (haswell), repack on", {**portable_path, "MEDGEM_LLAMA_CPU_VARIANT": "haswell",
                                                 "MEDGEM_LLAMA_REPACK": "on"}),
        ("portable, AVX2 (haswell), repack off", {**portable_path, "MEDGEM_LLAMA_CPU_VARIANT": "haswell",
                                                  "MEDGEM_LLAMA_REPACK": "off"}),
    ]
    results: dict[str, dict[str, Any]] = {}
    for name, env in rows:
        results[name] = run_row(folder, args.new_tokens, {**env, **fresh})
        print(name, json.dumps(results[name]), flush=True)
    base_name = "native build" if args.native_wheel else "portable, best backend"
    base = results[base_name]
    out: list[tuple[str, str, str]] = []
    for name, r in results.items():
        if "error" in r:
            out.append((name, "failed", r["error"]))
            continue
        ratio = ""
        if "error" not in base:
            ratio = (f"prefill {r['prefill_tok_s'] / base['prefill_tok_s']:.2f}x, decode "
                     f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x vs {base_name}; ")
        out.append((f"{name}", f"{r['decode_tok_s']:.2f} tok/s",
                    f"decode; prefill {r['prefill_tok_s']:.1f} tok/s; {ratio}repack "
                    f"{'on' if r['repack'] else 'off'}; RSS {r['peak_rss_gb']:.2f} GB; {r['kernels']}"))
    for name, seconds in build_s.items():
        out.append((f"{name} wheel build", f"{seconds / 60:.1f} min", f"{len(os.sched_getaffinity(0))} cores"))
    print(table(out))


if __name__ == "__main__":
    main()
