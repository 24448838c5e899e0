"""Gemma 3's vision tower and projector in PyTorch, read from the mmproj GGUF, for the llama.cpp
engine: the image's soft tokens come from here and go into llama.cpp's text model.

Why: the tower (SigLIP, 27 layers, 4,096 patches for an 896-px image, ~4 TFLOP) is
compute-bound, and llama.cpp's clip code runs it in f16 without the matrix units CPUs have for
bf16 (AVX512-BF16, AMX), which PyTorch reaches through oneDNN. Measured on an AVX512-BF16 CPU,
that did not pay (see ``speeds.choose_vision``); ``benchmarks/bench_vision.py`` measures both on any
machine, and ``--vision torch`` runs this path.

The weights are the mmproj's own (the ones llama.cpp would use), mapped back to transformers'
names through the same ``gguf`` tensor maps ``medgem convert`` writes with; Gemma's RMSNorm of
the projector is stored as 1 + w and is read back as w.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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


class TorchTower:
    """The mmproj's vision tower + projector as transformers modules.

    Args:
        mmproj: the vision projector GGUF.
        dtype: "bfloat16" or "float32" (default: $MEDGEM_VISION_DTYPE, else bf16 where the CPU
            has it natively).
        threads: torch threads (default: torch's own).
        attention: "sdpa" (PyTorch's kernel) or a blocked GEMM attention's name
            (``engines.attention``); default: whichever measured fastest at this tower's shape
            on this CPU (measured once, kept in the medgem cache: ``speeds.choose_attention``).
    """

    def __init__(self, mmproj: Path, dtype: str | None = None, threads: int | None = None,
                 attention: str | None = None) -> None:
        torch: Any = require("torch", "hf", "the PyTorch vision tower")
        import gguf
        from transformers import Gemma3Config, SiglipVisionConfig, SiglipVisionModel
        from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

        from medgem.engines.gguf.write import gguf_target
        from medgem.hardware import cpu_has_native_bf16

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
        native = cpu_has_native_bf16()
        self.dtype = dtype or ("bfloat16" if native else "float32")
        torch_dtype = getattr(torch, self.dtype)
        self.tower.to(torch_dtype)
        self.projector.to(torch_dtype)
        tokens = (image_size // patch_size) ** 2
        head_dim = vision.hidden_size // vision.num_attention_heads
        self.attention_times: dict[str, float] = {}
        if attention is None:
            from medgem.engines.llamacpp.speeds import choose_attention

            attention, self.attention_times = choose_attention(
                tokens, vision.num_attention_heads, head_dim, self.dtype, torch.get_num_threads())
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
        dtype = getattr(torch, self.dtype)
        with torch.inference_mode():
            hidden = self.tower(pixel_values=batch.to(dtype)).last_hidden_state
            tokens = self.projector(hidden)
        return tokens[0].float().numpy()
