"""llama.cpp as native code: pick its CPU kernels for this processor, and prove they run here.

A llama.cpp build made for one CPU dies with SIGILL on another, and even a matching build can
fault in one kernel family (ggml's AMX extra buffer type faults in ``ggml_backend_amx_mul_mat``
on this project's 2-core VMs). A signal kills the whole Python process, so: ``scripts/install.sh``
builds every x86-64 CPU backend (``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``) and
:func:`import_llama_cpp` loads the best one this CPU runs (``cpu_variant`` forces one); :func:`llama_model_params` turns the extra buffer types off on AMX CPUs; and
``probe.ensure_runs_here`` runs the same kernels in a child process first.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Any

from medgem.errors import EngineUnavailableError, require
from medgem.hardware import cpu_flags

# The /proc/cpuinfo flags that decide which ggml kernels can run, in the order users know them.
FEATURES = {"avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX512",
            "avx512_vnni": "AVX512-VNNI", "avx512_bf16": "AVX512-BF16", "avx_vnni": "AVX-VNNI",
            "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


def cpu_features(flags: set[str] | None = None) -> dict[str, bool]:
    """The CPU features that matter to llama.cpp and transformers, by their usual names."""
    present = cpu_flags() if flags is None else flags
    return {name: key in present for key, name in FEATURES.items()}


def describe_cpu_features(flags: set[str] | None = None) -> str:
    """One line, e.g. ``AVX2 ✓ AVX512 ✓ AVX512-BF16 ✓ AMX ✗``."""
    features = cpu_features(flags)
    shown = ("AVX2", "AVX512", "AVX512-VNNI", "AVX512-BF16", "AMX")
    return " ".join(f"{name} {'✓' if features[name] else '✗'}" for name in shown)


def use_extra_buffers(flags: set[str] | None = None, repack: bool | None = None) -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types (AMX tiles, CPU repack).

    Off on CPUs with AMX: the AMX kernels fault there, and turning them off cost nothing
    measurable (4.54 vs 4.70 tok/s decode, 4B Q4_K_M, 2 threads). On everywhere else, for
    decode: with the AVX2 backend 10.9 vs 9.6 tok/s, with AVX-512 12.2 vs 10.0 tok/s (4B
    Q4_K_M, 2 cores, benchmarks/bench_llamacpp_builds.py). Repacking slows prefill there (75 vs
    120 tok/s with AVX-512), which only wins for very long prompts (CT volumes).
    ``repack`` (the ``repack`` option, ``MEDGEM_LLAMA_REPACK=on|off``) overrides.
    """
    if repack is not None:
        return repack
    present = cpu_flags() if flags is None else flags
    return not (AMX_FLAGS & present)


# --- loading the library ---------------------------------------------------------------------

_LOADED: dict[str, Any] = {}


def library_dir() -> Path | None:
    """Where llama-cpp-python keeps its shared libraries, without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def cpu_variants(lib_dir: Path | None = None) -> list[str]:
    """The runtime-dispatched CPU backends the build holds (empty for a single native build)."""
    folder = lib_dir or library_dir()
    if folder is None or not folder.is_dir():
        return []
    names = (path.name for path in folder.glob("libggml-cpu-*.so"))
    return sorted(name[len("libggml-cpu-"):-len(".so")] for name in names)


def import_llama_cpp(cpu_variant: str | None = None, *, logs: bool = False) -> tuple[Any, Any]:
    """llama_cpp and its libmtmd bindings, with the best CPU backend for this processor loaded
    (``cpu_variant``: that one). The first call in a process decides; ``logs`` keeps llama.cpp's
    own log on stderr.

    Raises:
        MissingDependencyError: llama-cpp-python is not installed.
        EngineUnavailableError: a runtime-dispatch build holds no backend this CPU can run.
    """
    package = ("llamacpp", "the llama.cpp engine", "llama-cpp-python")
    llama_cpp: Any = require("llama_cpp", *package)
    mtmd: Any = require("llama_cpp.mtmd_cpp", *package)
    if "ggml" not in _LOADED:
        if not logs:
            silence_logs(llama_cpp, mtmd)
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        ggml = ctypes.CDLL(str(_mapped_ggml(lib_dir)))
        variants = cpu_variants(lib_dir)
        if cpu_variant:
            if cpu_variant not in variants:
                raise EngineUnavailableError(
                    f"MEDGEM_LLAMA_CPU_VARIANT={cpu_variant} is not a CPU backend of this "
                    "llama.cpp build",
                    f"choose one of: {', '.join(variants) or 'none (a single native build)'}",
                )
            ggml.ggml_backend_load.restype = ctypes.c_void_p
            ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
            ggml.ggml_backend_load(str(lib_dir / f"libggml-cpu-{cpu_variant}.so").encode())
        elif variants:
            # Scores every variant against this CPU and loads the best one it can run.
            ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
            ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
        ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        if not ggml.ggml_backend_reg_by_name(b"CPU"):
            raise EngineUnavailableError(
                "llama.cpp has no CPU backend that runs on this processor "
                f"({describe_cpu_features()})",
                "reinstall llama-cpp-python with scripts/install.sh, which builds every CPU variant",
            )
        llama_cpp.llama_backend_init()
        _LOADED["ggml"] = ggml
    return llama_cpp, mtmd


def _mapped_ggml(lib_dir: Path) -> Path:
    """The libggml that libllama was linked against and the loader already mapped.

    The wheel holds libggml.so, .so.0 and .so.0.x as separate copies; opening another copy would
    make a second ggml with its own (empty) backend registry.
    """
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1]
            if path.startswith(str(lib_dir)) and Path(path).name.startswith("libggml.so"):
                return Path(path)
    except OSError:
        pass
    return lib_dir / "libggml.so.0"


def kernel_features() -> dict[str, str]:
    """What the loaded CPU backend was compiled with (AVX2, AVX512_BF16, AMX_INT8, REPACK, ...)."""
    import_llama_cpp()
    ggml = _LOADED["ggml"]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    registry = ggml.ggml_backend_reg_by_name(b"CPU")
    address = ggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_get_features")
    if not address:
        return {}

    class Feature(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]

    getter = ctypes.CFUNCTYPE(ctypes.POINTER(Feature), ctypes.c_void_p)(address)
    features = getter(registry)
    found: dict[str, str] = {}
    index = 0
    while features[index].name:
        found[features[index].name.decode()] = (features[index].value or b"").decode()
        index += 1
    return found


def llama_model_params(llama_cpp: Any, *, repack: bool | None = None) -> Any:
    """Model parameters for the CPU: all layers on the CPU, the extra-buffer policy applied, no
    mmap (see ``LlamaCppEngine``: repacked weights would count twice)."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = use_extra_buffers(repack=repack)
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return params


def llama_context_params(llama_cpp: Any, n_ctx: int, n_batch: int, threads: int,
                         n_seq_max: int = 1, unified: bool = False) -> Any:
    """Context parameters: flash attention (faster on CPUs), sliding-window cache kept small,
    and ``unified``: one KV buffer shared by the ``n_seq_max`` sequences instead of one each
    (see ``LlamaCppEngine`` for which the engine uses and why)."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, n_seq_max
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.swa_full, params.no_perf = False, True
    params.kv_unified = unified and n_seq_max > 1
    return params


def mtmd_context(llama_cpp: Any, mtmd: Any, model: Any, mmproj: Path, threads: int) -> Any:
    """libmtmd's context for the vision projector ``mmproj`` on a loaded model, as the engine
    runs it: on the CPU, quiet, no warm-up, flash attention in the tower (the 4,096-patch
    attention is most of its work: measured, 4B shape, 2 cores: first token 21.9 s with it,
    40.3 s without). NULL when libmtmd cannot load the file."""
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = params.print_timings = params.warmup = False
    params.n_threads = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    return mtmd.mtmd_init_from_file(str(mmproj).encode(), model, params)


_LOG_CALLBACKS: list[Any] = []  # keep the ctypes callbacks alive


def silence_logs(llama_cpp: Any, mtmd: Any) -> None:
    """llama.cpp and libmtmd log every load step to stderr; medgem reports errors itself."""
    if _LOG_CALLBACKS:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def quiet(level: int, text: bytes, user_data: Any) -> None:
        return None

    _LOG_CALLBACKS.append(quiet)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    for setter in ("mtmd_log_set", "mtmd_helper_log_set"):
        if hasattr(mtmd, setter):
            getattr(mtmd, setter)(quiet, ctypes.c_void_p(0))
