"""Gemma 3's vision tower and projector in PyTorch, read from the mmproj GGUF, for the llama.cpp
engine: the image's soft tokens come from here and go into llama.cpp's text model.

Why: the tower (SigLIP, 27 layers, 4,096 patches for an 896-px image, ~4 TFLOP) is
compute-bound, and llama.cpp's clip code runs it in f16 without the matrix units CPUs have for
bf16 (AVX512-BF16, AMX), which PyTorch reaches through oneDNN. Measured on an AVX512-BF16 CPU,
that did not pay (see ``kernels.choose_vision``); ``benchmarks/bench_vision.py`` measures both on any
machine, and ``--vision torch`` runs this path.

The weights are the mmproj's own (the ones llama.cpp would use), mapped back to transformers'
names through the same ``gguf`` tensor maps ``medgem convert`` writes with; Gemma's RMSNorm of
the projector is stored as 1 + w and is read back as w.

Precision ("dtype"): float32, bfloat16 (only fast on CPUs with AVX512-BF16 or AMX; emulated
elsewhere, ~0.6 GFLOP/s on an AVX2 Zen 1), or int8: every linear layer of the encoder through
fbgemm's dynamic int8 GEMM (weights int8 per output channel; activations quantized at run time,
each token scaled to its own range), with the attention, norms, patch embedding and projector
in float32. Why int8: on CPUs without fast floating-point matrix units the fp32 GEMM is the
tower's floor (~67 GFLOP/s on that Zen 1), and integer GEMMs go below it. Why fbgemm's op and
not the alternatives, measured at the tower's 4096 x 1152 @ 1152 x 4304 on that (busy) Zen 1:
``torch._int_mm`` (what torchao's int8 runs on CPU) fell back to a plain loop, 0.8 GFLOP/s,
against fp32's 23-25 and fbgemm's 48-74 GFLOP/s-equivalent; ``quantize_dynamic`` wraps the same
fbgemm op in the deprecated ``torch.ao.quantization`` modules, with one activation scale per
matrix (relative error 0.023 against 0.009-0.01 per token on Gaussian inputs). Which precision
runs is measured once per CPU (``kernels.choose_tower_dtype``). Agreement with float32, stated and
tested (tests/test_vision_torch.py, on random-weight towers, not the real one): cosine
similarity per soft token >= 0.99 and relative L2 <= 0.05. A real tower's outlier channels
(large in every token) are not helped by per-token scales; that bound is not measured on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medgem.engines.int8 import int8_available, quantize_linears
from medgem.errors import InputError, require


def _medgem_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, **_: Any) -> tuple[Any, None]:
    """transformers' attention interface around ``engines.attention``: (batch, heads, tokens,
    head_dim) in, (batch, tokens, heads, head_dim) out as its SDPA gives; SigLIP has no mask."""
    from medgem.engines.attention import run_attention

    if attention_mask is not None or dropout:
        raise ValueError("medgem's vision attention takes no mask and no dropout")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = run_attention(module.medgem_attention, query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def _use_attention(tower: Any, choice: str) -> None:
    """Run ``tower``'s attention layers through ``choice`` ("sdpa" or a blocking's name)."""
    from transformers import AttentionInterface

    AttentionInterface.register("medgem", _medgem_attention)  # idempotent: the same function
    for module in tower.modules():
        if type(module).__name__ == "SiglipAttention":
            module.medgem_attention = choice
    tower.set_attn_implementation("medgem")


TOWER_DTYPES = ("float32", "bfloat16", "int8")
class TorchTower:
    """The mmproj's vision tower + projector as transformers modules.

    Args:
        mmproj: the vision projector GGUF.
        dtype: "float32", "bfloat16" or "int8" (the encoder's linear layers through fbgemm's
            int8 GEMM, the rest float32); default: whichever ran the tower's linear shape fastest on this CPU
            (measured once, kept in the medgem cache: ``kernels.choose_tower_dtype``). The
            engine passes the ``vision_dtype`` option ($MEDGEM_VISION_DTYPE) here.
        threads: torch threads (default: torch's own).
        attention: "sdpa" (PyTorch's kernel), "flash-bf16" (medgem's AVX512-BF16 kernel, a
            candidate for bfloat16 and int8 towers) or a blocked GEMM attention's name
            (``engines.attention``); default: whichever measured fastest at this tower's shape
            on this CPU (measured once, kept in the medgem cache: ``kernels.choose_attention``).
    """

    def __init__(self, mmproj: Path, dtype: str | None = None, threads: int | None = None,
                 attention: str | None = None) -> None:
        torch: Any = require("torch", "hf", "the PyTorch vision tower")
        import gguf
        from transformers import Gemma3Config, SiglipVisionConfig, SiglipVisionModel
        from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

        from medgem.engines.gguf.write import gguf_target

        if dtype is not None and dtype not in TOWER_DTYPES:
            raise InputError(f"unknown vision dtype '{dtype}'",
                             f"use one of: {', '.join(TOWER_DTYPES)}")
        if dtype == "int8" and not int8_available():
            raise InputError("this PyTorch build has no fbgemm int8 kernels",
                             "set vision_dtype to float32 (MEDGEM_VISION_DTYPE), or use an x86 "
                             "build of PyTorch")
        began = time.perf_counter()
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        reader = gguf.GGUFReader(str(mmproj))

        def field(key: str) -> Any:
            value = reader.fields[key]
            parts = [value.parts[i] for i in value.data]
            if len(parts) == 1 and len(parts[0]) == 1:
                return parts[0][0].item()
            return [p[0].item() for p in parts]

        image_size = int(field("clip.vision.image_size"))
        patch_size = int(field("clip.vision.patch_size"))
        scale = int(field("clip.vision.projector.scale_factor"))
        vision = SiglipVisionConfig(
            hidden_size=int(field("clip.vision.embedding_length")),
            intermediate_size=int(field("clip.vision.feed_forward_length")),
            num_hidden_layers=int(field("clip.vision.block_count")),
            num_attention_heads=int(field("clip.vision.attention.head_count")),
            layer_norm_eps=float(field("clip.vision.attention.layer_norm_epsilon")),
            image_size=image_size, patch_size=patch_size, vision_use_head=False,
        )
        per_side = image_size // patch_size // scale
        config = Gemma3Config(vision_config=vision.to_dict(), mm_tokens_per_image=per_side * per_side,
                              text_config={"hidden_size": int(field("clip.vision.projection_dim"))})
        self.tower = SiglipVisionModel(vision).eval()
        self.projector = Gemma3MultiModalProjector(config).eval()
        tensors = {t.name: t for t in reader.tensors}
        for prefix, module in (("vision_tower.", self.tower), ("multi_modal_projector.", self.projector)):
            state = {}
            for name, parameter in module.state_dict().items():
                target = gguf_target(prefix + name)
                if target is None or target.name not in tensors:
                    raise InputError(f"the vision projector lacks '{prefix + name}'",
                                     "convert the checkpoint again with medgem convert")
                value = torch.from_numpy(tensors[target.name].data.copy()).float()
                value = value.reshape(parameter.shape)
                state[name] = value - 1.0 if target.gemma_norm else value
            module.load_state_dict(state)
        self.dtype_times: dict[str, float] = {}
        if dtype is None:
            from medgem.engines.llamacpp.kernels import choose_tower_dtype

            dtype, self.dtype_times = choose_tower_dtype(torch.get_num_threads())
        self.dtype = dtype
        # int8 computes in float32 between its integer GEMMs (attention, norms, GELU)
        self.compute_dtype = "float32" if dtype == "int8" else dtype
        torch_dtype = getattr(torch, self.compute_dtype)
        self.tower.to(torch_dtype)
        self.projector.to(torch_dtype)
        encoder = getattr(self.tower, "vision_model", self.tower).encoder  # transformers 4 / 5
        self.int8_layers = quantize_linears(encoder) if dtype == "int8" else 0
        tokens = (image_size // patch_size) ** 2
        head_dim = vision.hidden_size // vision.num_attention_heads
        self.attention_times: dict[str, float] = {}
        if attention is None:
            from medgem.engines.llamacpp.kernels import choose_attention

            attention, self.attention_times = choose_attention(
                tokens, vision.num_attention_heads, head_dim, dtype,  # int8: its own key
                torch.get_num_threads())
        self.attention = attention
        _use_attention(self.tower, attention)
        self.image_size = image_size
        self.mean = [float(x) for x in field("clip.vision.image_mean")]
        self.std = [float(x) for x in field("clip.vision.image_std")]
        self.tokens = per_side * per_side
        self.load_s = time.perf_counter() - began

    def embed(self, image: Any) -> Any:
        """One image's soft tokens: a float32 numpy array (tokens, text hidden size)."""
        import numpy as np
        from PIL import Image

        torch = self._torch
        rgb = image.convert("RGB")
        if rgb.size != (self.image_size, self.image_size):
            rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        scaled = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
        mean = np.array(self.mean, dtype=np.float32)
        std = np.array(self.std, dtype=np.float32)
        normalised = ((scaled - mean) / std).astype(np.float32)
        batch = torch.from_numpy(normalised.transpose(2, 0, 1).copy())[None]
        dtype = getattr(torch, self.compute_dtype)
        with torch.inference_mode():
            hidden = self.tower(pixel_values=batch.to(dtype)).last_hidden_state
            tokens = self.projector(hidden)
        return tokens[0].float().numpy()
