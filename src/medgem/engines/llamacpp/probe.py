"""Prove llama.cpp's kernels run on this CPU, in a child process, before any medgem process
runs them itself.

A signal (SIGILL from an instruction this CPU lacks, SIGSEGV, a GGML_ABORT) kills the whole
Python process, so the engine and the converter first call :func:`ensure_runs_here`: a child
writes a tiny Gemma 3 GGUF, quantizes it to f16, Q8_0 and Q4_K_M, decodes it (batch and
single-token paths), and encodes an image through a tiny Gemma 3 vision projector, with the
same backend and settings as the engine. A pass is cached per build, CPU and settings; a failure
becomes one :class:`EngineUnavailableError` naming the signal and the CPU features.

``python -m medgem.engines.llamacpp.probe [SETTINGS]`` is that child: it prints one JSON line
(``SETTINGS``: the parent's native settings as JSON; without them, the environment's).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.engines.llamacpp.native import (
    describe_cpu_features,
    import_llama_cpp,
    kernel_features,
    library_dir,
    llama_context_params,
    llama_model_params,
    mtmd_context,
    use_extra_buffers,
)
from medgem.errors import EngineUnavailableError
from medgem.hardware import cpu_flags, cpu_name, usable_cores

PROBE_VERSION = 3  # bump when the probe exercises something new, so cached passes are redone
PROBE_TIMEOUT_S = 180.0
# Quantized file types the probe runs: each brings its own matmul kernels (llama_ftype numbers).
PROBE_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}


@dataclass(frozen=True)
class ProbeResult:
    """What a child process found when it ran llama.cpp's kernels on this CPU: ``ok`` when a
    tiny model was quantized, loaded and decoded in every probed file type and a tiny vision
    projector encoded an image, else ``detail`` says what happened (the signal, or the child's
    last error line); ``kernels`` are the features the chosen CPU backend was compiled with."""

    ok: bool
    detail: str = ""
    kernels: dict[str, str] = field(default_factory=dict)
    extra_buffers: bool = True
    seconds: float = 0.0
    cached: bool = False

    def message(self) -> str:
        return f"llama.cpp {self.detail} on this CPU ({cpu_name()}; {describe_cpu_features()})"


def _cache_file(cpu_variant: str | None, repack: bool | None) -> Path | None:
    """One file per llama.cpp build, CPU and settings: a pass is trusted only for the same ones."""
    lib_dir = library_dir()
    if lib_dir is None or not lib_dir.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(lib_dir.glob("*.so")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    digest.update(" ".join(sorted(cpu_flags())).encode())
    forced = cpu_variant or ""
    digest.update(f"{cpu_name()}|{use_extra_buffers(repack=repack)}|{forced}|{PROBE_VERSION}".encode())
    return cache_dir() / "llamacpp-probe" / f"{digest.hexdigest()[:24]}.json"


def probe(use_cache: bool = True, *, cpu_variant: str | None = None,
          repack: bool | None = None) -> ProbeResult:
    """Run a tiny model through llama.cpp's kernels in a child process, with the CPU backend
    and repacking the engine would use (``cpu_variant``, ``repack``: as the options say).

    A pass is cached per build and CPU (``MEDGEM_CACHE``); a failure is never cached, so a
    reinstall is picked up at once. ``use_cache=False`` runs the child whatever the cache says.
    """
    cache = _cache_file(cpu_variant, repack)
    if use_cache and cache is not None and cache.is_file():
        try:
            data = json.loads(cache.read_text())
            return ProbeResult(**{**data, "cached": True, "seconds": 0.0})
        except (OSError, ValueError, TypeError):
            pass
    settings = json.dumps({"cpu_variant": cpu_variant, "repack": repack})
    started = time.perf_counter()
    try:
        child = subprocess.run([sys.executable, "-m", "medgem.engines.llamacpp.probe", settings],
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"did not finish a tiny model in {PROBE_TIMEOUT_S:.0f} s")
    seconds = time.perf_counter() - started
    result = _read_child(child.returncode, child.stdout, child.stderr, seconds)
    if result.ok and cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fields = asdict(result)
            fields.pop("cached")
            cache.write_text(json.dumps(fields))
        except OSError:
            pass
    return result


def _read_child(returncode: int, stdout: str, stderr: str, seconds: float) -> ProbeResult:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = {"SIGILL": "an instruction this CPU lacks",
               "SIGSEGV": "a memory fault", "SIGBUS": "a bus error"}.get(name, "a fatal signal")
        return ProbeResult(False, f"crashed with {name} ({why}) running a tiny model", seconds=seconds)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(False, f"failed on a tiny model (exit {returncode}: {last})", seconds=seconds)
    data = json.loads(lines[-1])
    return ProbeResult(True, "", data.get("kernels", {}), bool(data.get("extra_buffers")),
                       seconds=seconds)


def ensure_runs_here(*, cpu_variant: str | None = None, repack: bool | None = None) -> ProbeResult:
    """Raise before llama.cpp runs in this process if its kernels crash on this CPU (the
    ``probe`` option, ``MEDGEM_LLAMA_PROBE=0``, skips calling it).

    Raises:
        EngineUnavailableError: the probe crashed or failed; the message names the signal and
            the CPU features, the hint what to do.
    """
    result = probe(cpu_variant=cpu_variant, repack=repack)
    if not result.ok:
        raise EngineUnavailableError(
            result.message(),
            "reinstall llama-cpp-python with scripts/install.sh (a portable build with runtime "
            "CPU dispatch), try MEDGEM_LLAMA_REPACK=off, or use --engine hf",
        )
    return result


# --- the child ---------------------------------------------------------------------------------


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 GGUF in float32 (hidden 256 so every K-quant applies), random weights."""
    import gguf
    import numpy as np

    hidden, ffn, heads, head_dim, layers = 256, 512, 2, 128, 2
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("medgem llama.cpp probe")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(1)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(64)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(0)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    pieces = [f"<0x{value:02X}>" for value in range(256)]
    words = [chr(ord("a") + i) for i in range(26)] + ["▁" + chr(ord("a") + i) for i in range(26)]
    tokens = specials + pieces + words
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(specials) + [0.0] * 256 + [-float(i) for i in range(len(words))])
    writer.add_token_types([3] * len(specials) + [6] * 256 + [1] * len(words))
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)

    def weight(*shape: int) -> Any:  # numpy shape = (rows, columns) = GGML (ne1, ne0)
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for index in range(layers):
        blk = f"blk.{index}"
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(hidden, dtype=np.float32))
        for norm in ("attn_q_norm", "attn_k_norm"):
            writer.add_tensor(f"{blk}.{norm}.weight", np.ones(head_dim, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", weight(heads * head_dim, hidden))
        writer.add_tensor(f"{blk}.attn_k.weight", weight(head_dim, hidden))
        writer.add_tensor(f"{blk}.attn_v.weight", weight(head_dim, hidden))
        writer.add_tensor(f"{blk}.attn_output.weight", weight(hidden, heads * head_dim))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"{blk}.ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load_model(llama_cpp: Any, path: Path, repack: bool | None) -> Any:
    model = llama_cpp.llama_model_load_from_file(str(path).encode(),
                                                 llama_model_params(llama_cpp, repack=repack))
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path.name}")
    return model


@contextmanager
def one_image(llama_cpp: Any, mtmd: Any, text_model: Path, mmproj: Path, size: int,
              threads: int, repack: bool | None = None) -> Iterator[tuple[Any, Any]]:
    """libmtmd on ``mmproj`` (and the text model it needs beside it) with one random
    ``size``-px image tokenized: (libmtmd context, the image's chunk), freed on leaving."""
    import numpy as np

    model = _load_model(llama_cpp, text_model, repack)
    context = mtmd_context(llama_cpp, mtmd, model, mmproj, threads)
    if not context:
        llama_cpp.llama_model_free(model)
        raise RuntimeError(f"libmtmd could not load the projector {mmproj.name}")
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes()
    buffer = (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels)
    bitmap = mtmd.mtmd_bitmap_init(size, size, buffer)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        marker = mtmd.mtmd_default_marker()
        prompt = mtmd.mtmd_input_text()
        prompt.text, prompt.text_len = marker, len(marker)
        prompt.add_special, prompt.parse_special = False, True
        array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        if mtmd.mtmd_tokenize(context, chunks, ctypes.byref(prompt), array, 1) != 0:
            raise RuntimeError("libmtmd could not tokenize a random image")
        found = (mtmd.mtmd_input_chunks_get(chunks, i)
                 for i in range(mtmd.mtmd_input_chunks_size(chunks)))
        text = mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT
        chunk = next((c for c in found if mtmd.mtmd_input_chunk_get_type(c) != text), None)
        if chunk is None:
            raise RuntimeError("libmtmd made no image chunk")
        yield context, chunk
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(context)
        llama_cpp.llama_model_free(model)


def _encode_tiny_image(llama_cpp: Any, mtmd: Any, model_path: Path, mmproj: Path,
                       repack: bool | None) -> int:
    """Run the vision projector on one 64-px image; returns the soft tokens it made."""
    import numpy as np

    with one_image(llama_cpp, mtmd, model_path, mmproj, 64, usable_cores(), repack) as (
            context, chunk):
        if mtmd.mtmd_encode_chunk(context, chunk) != 0:
            raise RuntimeError("libmtmd could not encode the probe image")
        tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(context), shape=(tokens * 256,))
        if not np.isfinite(embd).all():
            raise RuntimeError("non-finite image embeddings")
        return tokens


def _decode_tiny(llama_cpp: Any, path: Path, repack: bool | None) -> list[int]:
    """Load, prefill 8 tokens (matrix-matrix kernels), decode 4 (matrix-vector); greedy ids."""
    import numpy as np

    model = _load_model(llama_cpp, path, repack)
    params = llama_context_params(llama_cpp, 64, 16, usable_cores())
    context = llama_cpp.llama_init_from_model(model, params)
    if not context:
        llama_cpp.llama_model_free(model)
        raise RuntimeError("llama.cpp could not make a context")
    try:
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        tokens = [2, 270, 280, 290, 300, 271, 281, 291]
        picked: list[int] = []
        for _ in range(5):
            array = (llama_cpp.llama_token * len(tokens))(*tokens)
            if llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(array, len(tokens))):
                raise RuntimeError("llama_decode failed")
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context, -1), shape=(n_vocab,))
            if not np.isfinite(logits).all():
                raise RuntimeError("non-finite logits")
            tokens = [int(np.argmax(logits))]
            picked.append(tokens[0])
        return picked
    finally:
        llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)


def _run_probe(cpu_variant: str | None, repack: bool | None) -> int:
    from medgem.engines.gguf.write import write_random_mmproj

    llama_cpp, mtmd = import_llama_cpp(cpu_variant)
    with tempfile.TemporaryDirectory(prefix="medgem-probe-") as folder:
        source = write_tiny_gguf(Path(folder) / "f32.gguf")
        runs: dict[str, list[int]] = {}
        for name, ftype in PROBE_TYPES.items():
            target = Path(folder) / f"{name}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = 1
            if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                              ctypes.byref(params)) != 0:
                raise RuntimeError(f"llama.cpp could not quantize the probe model to {name}")
            runs[name] = _decode_tiny(llama_cpp, target, repack)
        # one f16 layer at 64 px, 16-px patches, 4 soft tokens: enough to run libmtmd's clip
        # kernels (conv, attention, pooling)
        mmproj = write_random_mmproj(Path(folder) / "mmproj.gguf", hidden=64, intermediate=128,
                                     heads=2, image_size=64, patch_size=16, scale_factor=2)
        image_tokens = _encode_tiny_image(llama_cpp, mtmd, Path(folder) / "f16.gguf", mmproj, repack)
    print(json.dumps({"ok": True, "kernels": kernel_features(), "runs": runs,
                      "image_tokens": image_tokens, "extra_buffers": use_extra_buffers(repack=repack)}))
    return 0


if __name__ == "__main__":  # the child: its own edge, so the environment is read here
    from medgem.config import load_settings
    from medgem.errors import MedgemError

    try:
        settings: dict[str, Any] = (json.loads(sys.argv[1]) if len(sys.argv) > 1
                                    else load_settings().engine_fields("llamacpp"))
        sys.exit(_run_probe(settings.get("cpu_variant"), settings.get("repack")))
    except (MedgemError, RuntimeError, OSError) as exc:
        print(str(exc), file=sys.stderr)  # the parent quotes this last line
        sys.exit(1)
