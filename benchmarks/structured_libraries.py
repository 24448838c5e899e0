"""Grammar libraries for the transformers logits processor, on the real Gemma 3 tokenizer.

For each of xgrammar, llguidance and outlines-core (whichever are installed): the time to
compile each built-in schema (plus a nested one) for Gemma 3's 262k-token vocabulary, and the
per-token cost of computing the next-token mask while walking a valid answer token by token.
Prints a table and each library's ratio to llguidance (the one medgem uses).

    python benchmarks/structured_libraries.py --tokenizer PATH_TO_A_GEMMA3_CHECKPOINT
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from medgem.structured.builtin import BOXES, CXR_FINDINGS, LAB_VALUES

EXAMPLES: dict[str, tuple[str, Any]] = {
    "boxes": (BOXES.schema_json, [{"box_2d": [120, 80, 940, 510], "label": "right lung"},
                                  {"box_2d": [130, 520, 930, 950], "label": "left lung"}]),
    "lab-values": (LAB_VALUES.schema_json, [
        {"name": "Haemoglobin", "value": 13.2, "unit": "g/dL", "reference_range": "13.0-17.0",
         "flag": "normal", "specimen": "blood", "collection_time": "2026-01-05 08:10"},
        {"name": "CRP", "value": "<0.5", "unit": "mg/L"}]),
    "cxr-findings": (CXR_FINDINGS.schema_json, {
        "findings": [{"finding": "pleural effusion", "location": "right base", "certainty": "probable"}],
        "impression": "Small right effusion."}),
}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Library:
    name = ""

    def compile(self, schema: str) -> Any: ...
    def walk(self, compiled: Any, tokens: list[int]) -> float: ...


class LLGuidance(Library):
    name = "llguidance 1.9.1"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll, self.lt = llguidance, llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.mask = llguidance.torch.allocate_token_bitmask(1, self.tok.vocab_size)

    def compile(self, schema: str) -> Any:
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = self.ll.LLMatcher(self.tok, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def walk(self, compiled: Any, tokens: list[int]) -> float:
        matcher = self.ll.LLMatcher(self.tok, compiled)
        began = time.perf_counter()
        for token in tokens:
            self.lt.fill_next_token_bitmask(matcher, self.mask, 0)
            assert matcher.consume_token(token), matcher.get_error()
        return (time.perf_counter() - began) / len(tokens)


class XGrammar(Library):
    name = "xgrammar 0.2.9"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar

        self.xg = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.mask = xgrammar.allocate_token_bitmask(1, vocab)

    def compile(self, schema: str) -> Any:
        return self.compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))

    def walk(self, compiled: Any, tokens: list[int]) -> float:
        matcher = self.xg.GrammarMatcher(compiled)
        began = time.perf_counter()
        for token in tokens:
            matcher.fill_next_token_bitmask(self.mask)
            assert matcher.accept_token(token)
        return (time.perf_counter() - began) / len(tokens)


class OutlinesCore(Library):
    name = "outlines-core 0.2.14"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        self.oc, self.regex = outlines_core, build_regex_from_schema
        pieces: dict[bytes, list[int]] = {}
        special = set(tokenizer.all_special_ids)
        for token, index in tokenizer.get_vocab().items():
            if index in special:
                continue
            if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
                piece = bytes([int(token[3:5], 16)])
            else:
                piece = token.replace("\u2581", " ").encode()
            pieces.setdefault(piece, []).append(index)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, pieces)

    def compile(self, schema: str) -> Any:
        return self.oc.Index(self.regex(schema, whitespace_pattern=r"[ ]?"), self.vocabulary)

    def walk(self, compiled: Any, tokens: list[int]) -> float:
        guide = self.oc.Guide(compiled)
        began = time.perf_counter()
        for token in tokens:
            guide.get_tokens()
            guide.advance(token)
        return (time.perf_counter() - began) / len(tokens)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    value = call()
    return value, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a folder with Gemma 3's tokenizer.json")
    parser.add_argument("--vocab", type=int, default=262208, help="the model's vocabulary (logits) size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows: list[tuple[str, str, float, float, float]] = []
    for kind in (LLGuidance, XGrammar, OutlinesCore):
        try:
            library, setup = timed(lambda kind=kind: kind(tokenizer, args.vocab))  # type: ignore[misc]
        except ImportError as exc:
            print(f"{kind.name}: not installed ({exc})")
            continue
        for name, (schema, example) in EXAMPLES.items():
            compile_s = min(timed(lambda s=schema, lib=library: lib.compile(s))[1] for _ in range(args.repeat))
            compiled = library.compile(schema)
            tokens = tokenizer.encode(compact(example), add_special_tokens=False)
            per_token = statistics.median(library.walk(compiled, tokens) for _ in range(args.repeat))
            rows.append((library.name, name, setup, compile_s, per_token))
    base = {name: (c, t) for lib, name, _, c, t in rows if lib.startswith("llguidance")}
    print("\n| library | schema | tokenizer setup s | compile ms | mask µs/token | vs llguidance (compile, mask) |")
    print("|---|---|---|---|---|---|")
    for lib, name, setup, compile_s, per_token in rows:
        b = base.get(name)
        ratio = f"{compile_s / b[0]:.1f}x, {per_token / b[1]:.1f}x" if b else "-"
        print(f"| {lib} | {name} | {setup:.2f} | {compile_s * 1e3:.1f} | {per_token * 1e6:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
