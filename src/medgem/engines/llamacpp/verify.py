"""A GGUF that ``medgem convert`` wrote, loaded back on the llama.cpp engine and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgem.engines.llamacpp.engine import LlamaCppEngine
from medgem.engines.options import LlamaCppOptions
from medgem.errors import ConversionError
from medgem.request import GenerationOptions, ImagePart, Message, Request, TextPart
from medgem.resolve import resolve_checkpoint


def check_conversion(folder: Path, model: Path, mmproj: Path | None,
                     options: LlamaCppOptions | None = None) -> str:
    """Load a converted GGUF pair with the llama.cpp engine (``options``' native settings, a
    1,024-token context); the tokenizer must tokenize like the checkpoint's, and one greedy
    step (with an image when there is an mmproj) must run.

    Raises:
        ConversionError: any mismatch.
    """
    from transformers import AutoTokenizer

    options = (options or LlamaCppOptions()).model_copy(update={"n_ctx": 1024})
    engine = LlamaCppEngine(resolve_checkpoint(model, mmproj=mmproj), options)
    try:
        probe = ("<start_of_turn>user\nPneumothorax? 12 mm, left apex;  café 😀\n"
                 "<end_of_turn>\n<start_of_turn>model\n<unused94>thought\n")
        reference = AutoTokenizer.from_pretrained(str(folder))(probe, add_special_tokens=False).input_ids
        got = engine.tokenize(probe)
        if got != list(reference):
            raise ConversionError(
                "the GGUF tokenizer does not tokenize like the checkpoint's "
                f"({len(got)} vs {len(reference)} tokens for a probe text)",
                "report this with the checkpoint's tokenizer files",
            )
        parts: list[Any] = [TextPart("Describe this.")]
        if mmproj is not None:
            from PIL import Image

            parts.insert(0, ImagePart(Image.new("RGB", (32, 32), (90, 90, 90))))
        request = Request((Message("user", tuple(parts)),), GenerationOptions(max_new_tokens=1))
        events = list(engine.generate(request))
        prompt_tokens = events[-1].usage.prompt_tokens  # type: ignore[union-attr]
    finally:
        engine.close()
    image_note = " with an image" if mmproj is not None else ""
    return f"tokenizer matches the checkpoint; one step ran{image_note} ({prompt_tokens} prompt tokens)"
