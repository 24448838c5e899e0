"""The llama.cpp engine's prompt side: a request rendered with the GGUF's chat template and cut
into units the KV cache can reuse (text tokens, and whole images by pixel digest).

Each ``<start_of_image>`` is replaced by libmtmd's media marker framed by blank lines, as Gemma
3's processor frames it, and libmtmd tokenizes the text and preprocesses the images into chunks
(done once per request: the context check and generation share the result).
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from medgem.errors import InputError, UnsupportedInputError
from medgem.request import Request, TextPart


@dataclass(frozen=True)
class Unit:
    """One reusable step of a prompt: a text token, or a whole image (by pixel digest)."""

    key: int | str
    n_pos: int


@dataclass
class Prompt:
    units: list[Unit]
    chunks: Any  # mtmd_input_chunks_p, or None for text-only prompts
    chunk_of_unit: list[tuple[int, int]]  # unit -> (chunk index, token offset); text: (-1, i)
    tokens: list[int]
    pixels: dict[str, Any] = field(default_factory=dict)  # image unit key -> the RGB image

    @property
    def n_pos(self) -> int:
        return sum(unit.n_pos for unit in self.units)


class PromptBuilder:
    """Renders, tokenizes and (with a projector) cuts prompts into libmtmd chunks for one model.

    ``mtmd_lock`` is the engine's: libmtmd's context is shared with the vision tower's encode.
    """

    def __init__(self, llama_cpp: Any, mtmd: Any, vocab: Any, mtmd_ctx: Any, template: str,
                 image_size: int, model_name: str, mtmd_lock: threading.Lock) -> None:
        self._llama_cpp = llama_cpp
        self._mtmd = mtmd
        self._vocab = vocab
        self.mtmd_ctx = mtmd_ctx
        self._template = compile_template(template)
        self._image_size = image_size
        self._model_name = model_name
        self._lock = mtmd_lock
        self._marker = mtmd.mtmd_default_marker().decode()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed, no BOS added)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        buffer = (self._llama_cpp.llama_token * size)()
        count = self._llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, False, True)
        return list(buffer[:count])

    def render(self, request: Request) -> str:
        """The prompt text, images as ``<start_of_image>`` (chat) as the template writes them."""
        if request.template == "completion":
            last = request.messages[-1]
            parts = [p.text if isinstance(p, TextPart) else "<start_of_image>" for p in last.parts]
            return "<bos>" + "".join(parts)
        return str(self._template.render(messages=request.template_messages(),
                                         add_generation_prompt=True, bos_token="<bos>",
                                         eos_token="<eos>"))

    def build(self, request: Request) -> Prompt:
        """The request as units (free its chunks with ``free`` unless generation does)."""
        turns = request.messages[-1:] if request.template == "completion" else request.messages
        images = [part.image for message in turns for part in message.images]
        if images and self.mtmd_ctx is None:
            raise UnsupportedInputError(
                f"'{self._model_name}' has no vision projector, so it cannot take images",
                "pass the model's mmproj file with --mmproj (medgem convert writes mmproj.gguf "
                "next to model.gguf), or ask without an image",
            )
        text = self.render(request)
        if not images:
            tokens = self.tokenize(text)
            return Prompt([Unit(t, 1) for t in tokens], None,
                          [(-1, i) for i in range(len(tokens))], tokens)
        framed = text.replace("<start_of_image>", f"\n\n{self._marker}\n\n")
        with self._lock:
            return self._chunks(framed, images)

    def free(self, prompt: Prompt) -> None:
        if prompt.chunks is not None:
            self._mtmd.mtmd_input_chunks_free(prompt.chunks)
            prompt.chunks = None

    def _bitmap(self, image: Any) -> tuple[Any, str, Any]:
        """(libmtmd bitmap, pixel digest, resized RGB image) for one image."""
        rgb = image.convert("RGB")
        size = self._image_size
        if size and rgb.size != (size, size):
            # Resize as Gemma 3's processor does (PIL bilinear), so both engines see the same
            # pixels; llama.cpp's own resize then has nothing to do.
            from PIL import Image

            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        data = rgb.tobytes()
        digest = hashlib.sha256(data).hexdigest()[:32]
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = self._mtmd.mtmd_bitmap_init(rgb.size[0], rgb.size[1], buffer)
        self._mtmd.mtmd_bitmap_set_id(bitmap, digest.encode())
        return bitmap, digest, rgb

    def _chunks(self, text: str, images: list[Any]) -> Prompt:
        mtmd = self._mtmd
        prepared: list[tuple[Any, str, Any]] = []
        try:
            for image in images:
                prepared.append(self._bitmap(image))
            chunks = mtmd.mtmd_input_chunks_init()
            encoded = text.encode("utf-8")
            text_input = mtmd.mtmd_input_text()
            text_input.text = encoded
            text_input.text_len = len(encoded)
            text_input.add_special = False
            text_input.parse_special = True
            array = (mtmd.mtmd_bitmap_p_ctypes * len(prepared))(*[b for b, _, _ in prepared])
            result = mtmd.mtmd_tokenize(self.mtmd_ctx, chunks, ctypes.byref(text_input), array,
                                        len(prepared))
        finally:
            for bitmap, _, _ in prepared:
                mtmd.mtmd_bitmap_free(bitmap)
        if result != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise InputError(f"llama.cpp could not prepare the images (mtmd error {result})",
                             "check that each image opens and that the prompt has one image "
                             "marker per image")
        units: list[Unit] = []
        where: list[tuple[int, int]] = []
        tokens: list[int] = []
        pixels: dict[str, Any] = {}
        images_seen = iter(prepared)
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                for offset in range(count.value):
                    units.append(Unit(int(pointer[offset]), 1))
                    where.append((index, offset))
                    tokens.append(int(pointer[offset]))
            else:
                _, digest, rgb = next(images_seen)
                units.append(Unit(f"image:{digest}", int(mtmd.mtmd_input_chunk_get_n_pos(chunk))))
                pixels[f"image:{digest}"] = rgb
                where.append((index, 0))
                tokens.extend([-1] * int(mtmd.mtmd_input_chunk_get_n_tokens(chunk)))
        return Prompt(units, chunks, where, tokens, pixels)


def compile_template(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise InputError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
