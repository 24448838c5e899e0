"""Constrained decoding shared by the local engines: llguidance masks, one matcher per sequence.

An engine builds one ``Grammars`` for its vocabulary (llguidance's tokenizer view of it, made
once, on the first constrained request) and asks it for a ``RowGuide`` per sequence. Before each
draw the guide writes the row's allowed-token bitmask; the engine applies it to that row's logits
and samples as usual, so constrained and free sequences share a batch (free rows are untouched).

llguidance was chosen over xgrammar and outlines-core (benchmarks/bench_structured_libraries.py):
compiling a schema for Gemma 3's 262k vocabulary takes about a millisecond (xgrammar ~150 ms,
outlines-core 5-13 s), a mask about 40-100 µs per token, and it honours integer and number
ranges, which llama-cpp-python's JSON-schema -> GBNF converter drops.

Thinking: with ``think`` on, the first token may open a thought (``<unused94>``) instead of
starting the JSON; the thought is free, and the constraint starts after ``<unused95>``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medgem.errors import SchemaError, require
from medgem.structured import Constraint

Phase = Literal["open", "thought", "json"]
#: llguidance options for JSON schemas: compact JSON (no free whitespace a model can loop on).
JSON_DEFAULTS = {"whitespace_flexible": False}


def import_llguidance() -> Any:
    """llguidance, or a MissingDependencyError naming the extra."""
    return require("llguidance", "llamacpp", "constrained decoding (a JSON schema)")


class Grammars:
    """One vocabulary's compiled grammars.

    Args:
        make_tokenizer: builds llguidance's LLTokenizer (slow: about a second on 262k tokens,
            more on a busy machine); called once, on the first constrained request.
        think_open: the token that opens a thought, or -1.
        think_close: the token that closes it, or -1.
    """

    def __init__(self, make_tokenizer: Callable[[], Any], think_open: int, think_close: int) -> None:
        self._make_tokenizer = make_tokenizer
        self._tokenizer: Any = None
        self._compiled: dict[str, str] = {}
        self._lock = threading.Lock()
        self.think_open = think_open
        self.think_close = think_close

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def compile(self, constraint: Constraint) -> str:
        """The llguidance grammar for ``constraint``, checked against this vocabulary (cached).

        Raises:
            SchemaError: llguidance refuses the schema (the message says why).
        """
        schema = constraint.decoding_schema_json  # strict: undeclared keys closed off
        cached = self._compiled.get(schema)
        if cached is not None:
            return cached
        ll = import_llguidance()
        grammar = ll.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        errors = ll.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if errors:
            raise SchemaError(f"the JSON schema cannot be turned into a grammar: {' '.join(errors.split())}",
                              "simplify the schema")
        self._compiled[schema] = grammar
        return grammar

    def guide(self, constraint: Constraint | None, think: bool) -> RowGuide | None:
        """A fresh guide for one sequence (None for a free one)."""
        if constraint is None:
            return None
        ll = import_llguidance()
        matcher = ll.LLMatcher(self.tokenizer, self.compile(constraint))
        if matcher.is_error():
            raise SchemaError(f"the JSON schema cannot be matched: {matcher.get_error()}")
        phase: Phase = "open" if think and self.think_open >= 0 else "json"
        return RowGuide(matcher, self, phase)

    def bitmask(self, rows: int) -> np.ndarray:
        """An all-allowed bitmask for ``rows`` rows: int32, 32 tokens a word."""
        # shape: (rows, ceil(vocab / 32))
        return np.full((rows, (self.vocab_size + 31) // 32), -1, dtype=np.int32)


@dataclass(eq=False)
class RowGuide:
    """One sequence's constraint: its llguidance matcher and where the thought stands.

    Attributes:
        phase: "open" (may open a thought or start the JSON), "thought" (free), "json"
            (constrained; once the JSON closes only an end token is allowed).
        error: why the matcher stopped accepting, if it did.
    """

    matcher: Any
    grammars: Grammars
    phase: Phase
    error: str | None = None

    @property
    def constrains(self) -> bool:
        """Whether the next draw is masked (not inside a free thought)."""
        return self.phase != "thought"

    def fill(self, bitmask: np.ndarray, row: int) -> bool:
        """Write this sequence's allowed tokens into ``bitmask[row]``; False when the row is free
        for this draw (inside the thought) and was left as it was."""
        if not self.constrains:
            return False
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self.matcher, bitmask, row)
        if self.phase == "open":
            token = self.grammars.think_open
            words = bitmask.view(np.uint32)
            words[row, token // 32] |= np.uint32(1 << (token % 32))
        return True

    def accept(self, token: int) -> None:
        """Advance past the drawn token."""
        if self.phase == "open" and token == self.grammars.think_open:
            self.phase = "thought"
            return
        if self.phase == "thought":
            if token == self.grammars.think_close:
                self.phase = "json"
            return
        if self.phase == "open":
            self.phase = "json"
        if self.error is None and not self.matcher.consume_token(token):
            self.error = str(self.matcher.get_error()) or "the token does not fit the grammar"


def allows(bitmask: np.ndarray, token: int) -> bool:
    """Whether ``token``'s bit is set in one row's bitmask ((words,) int32)."""
    if token // 32 >= bitmask.shape[0]:
        return False
    return bool((int(bitmask.view(np.uint32)[token // 32]) >> (token % 32)) & 1)


def allowed_tokens(bitmask: np.ndarray, size: int) -> np.ndarray:
    """(size,) bool: which of a row's ``size`` logits the bitmask allows.

    Args:
        bitmask: (ceil(tokenizer vocab / 32),) int32, bit i set = token i allowed.
        size: the logits' length (may be longer than the bitmask covers: the padding tokens
            past the tokenizer's vocabulary are disallowed).
    """
    allowed = np.zeros(size, dtype=bool)
    bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:size]  # (32 * words,)
    allowed[: bits.shape[0]] = bits
    return allowed


class GuidedRows:
    """A transformers logits processor for a static batch: row i follows ``guides[i]`` (None: a
    free row, never touched). Before each draw it advances every guide past the token its row
    drew last, then masks the constrained rows' scores; a row that has ended (an end token) is
    left alone, as generate() pads it from then on. Greedy rows whose best token is allowed
    already are left as they are (the draw is the same; the full mask costs milliseconds).

    Args:
        guides: one per batch row.
        grammars: their vocabulary.
        end_ids: the tokens that end a row.
        greedy: the batch decodes greedily.
    """

    def __init__(self, guides: list[RowGuide | None], grammars: Grammars, end_ids: set[int],
                 greedy: bool = False) -> None:
        self.greedy = greedy
        self.guides = guides
        self.grammars = grammars
        self.end_ids = end_ids
        self._length: int | None = None  # input_ids' width at the last call
        self._ended = [guide is None for guide in guides]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        # input_ids: (rows, prompt + drawn so far) int64; scores: (rows, vocab) float
        import torch

        width = int(input_ids.shape[1])
        if self._length is not None and width > self._length:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                guide = self.guides[row]
                if guide is None or self._ended[row]:
                    continue
                if token in self.end_ids:
                    self._ended[row] = True
                else:
                    guide.accept(int(token))
        self._length = width
        mask = self.grammars.bitmask(len(self.guides))
        for row, guide in enumerate(self.guides):
            if guide is None or self._ended[row] or not guide.fill(mask, row):
                continue
            if self.greedy and allows(mask[row], int(scores[row].argmax())):
                continue
            keep = torch.from_numpy(allowed_tokens(mask[row], scores.shape[-1]))
            scores[row].masked_fill_(~keep.to(scores.device), float("-inf"))
        return scores
