"""The token side of the llama.cpp engine: a vocabulary's pieces, llguidance's view of it, and
the sampler chain that draws each token (greedy = argmax, as transformers' greedy search)."""

from __future__ import annotations

import ctypes
from typing import Any

from medgem.request import GenerationOptions


class Vocab:
    """A GGUF's vocabulary as llama.cpp holds it."""

    def __init__(self, lib: Any, vocab: Any) -> None:
        self._lib = lib
        self.handle = vocab
        self.size = int(lib.llama_vocab_n_tokens(vocab))

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.handle, token))

    def piece(self, token: int, special: bool) -> bytes:
        """A token's bytes; control tokens render as nothing unless ``special``."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            count = self._lib.llama_token_to_piece(self.handle, token, buffer, size, 0, special)
            if count >= 0:
                return buffer.raw[:count]
            size = -count

    def lltokenizer(self) -> Any:
        """llguidance's view of this vocabulary (as ``llguidance.llamacpp`` builds it, through
        the non-deprecated attribute call): every token's bytes, control tokens marked with a
        leading 0xff; the end tokens are eos and end of turn."""
        import llguidance

        lib = self._lib
        control = lib.LLAMA_TOKEN_ATTR_CONTROL
        user = lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        tokens = []
        for token in range(self.size):
            piece = self.piece(token, special=True)
            attr = int(lib.llama_vocab_get_attr(self.handle, token))
            if attr & control or (attr & user and piece.startswith(b"<") and piece.endswith(b">")):
                piece = b"\xff" + piece
            tokens.append(piece)
        ends = [t for t in (int(lib.llama_vocab_eos(self.handle)), int(lib.llama_vocab_eot(self.handle)))
                if t >= 0]
        tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
            tokens=tokens, vocab_ptr=self.handle, tokenize_fptr=tokenize, eos_token=ends)


def sampler_chain(lib: Any, options: GenerationOptions) -> Any:
    """llama.cpp's own sampler chain: greedy, or top-p then temperature then a seeded draw."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if options.greedy:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if options.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(options.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(options.temperature))
    seed = lib.LLAMA_DEFAULT_SEED if options.seed is None else options.seed & 0xFFFFFFFF
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return chain
