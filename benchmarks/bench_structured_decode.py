"""Decode speed with and without a JSON schema, on llama.cpp and transformers, in one run.

    python benchmarks/bench_structured_decode.py                       # the 270M GGUF only
    python benchmarks/bench_structured_decode.py --hf CHECKPOINT       # and a transformers checkpoint

For each engine: greedy decode tok/s of a free answer and of one constrained to a schema whose
answer runs to the budget (one long string field, so both decode the same number of tokens),
the ratio constrained / free (target: >= 0.90), and the one-time costs of constraining: the
llguidance tokenizer setup and each built-in schema's compile time. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from medgem.engines import HFOptions, LlamaCppOptions, load_engine
from medgem.engines.base import Finished
from medgem.request import GenerationOptions, Message, Request, TextPart
from medgem.resolve import resolve_checkpoint
from medgem.structured import Constraint
from medgem.structured.builtin import BUILTINS


def long_answer(tokens: int) -> Constraint:
    """One string field the model cannot close before the budget (a token is at most 16 bytes
    here, mostly fewer: at least 16 characters per token keeps it open)."""
    return Constraint.from_schema({"type": "object", "properties": {
        "report": {"type": "string", "minLength": 16 * tokens}},
        "required": ["report"], "additionalProperties": False}, name="long")
PROMPT = "Write the radiology report of a normal chest X-ray as JSON:"


def request(tokens: int, constraint: Constraint | None, template: str) -> Request:
    options = GenerationOptions(max_new_tokens=tokens, constraint=constraint)
    return Request((Message("user", (TextPart(PROMPT),)),), options, template=template)  # type: ignore[arg-type]


def decode_rate(engine: Any, tokens: int, constraint: Constraint | None, template: str,
                repeat: int) -> tuple[float, int]:
    rates, produced = [], 0
    for _ in range(repeat):
        finished = [e for e in engine.generate(request(tokens, constraint, template))
                    if isinstance(e, Finished)][-1]
        rates.append(finished.timings.decode_tokens_per_s)
        produced = finished.usage.completion_tokens
    return statistics.median(rates), produced


def measure(name: str, engine: Any, tokens: int, template: str, repeat: int) -> list[str]:
    grammars = engine._grammars
    began = time.perf_counter()
    grammars.tokenizer  # noqa: B018  (built on first use; timed here)
    setup = time.perf_counter() - began
    compiles = []
    for key, constraint in BUILTINS.items():
        began = time.perf_counter()
        grammars.compile(constraint)
        compiles.append(f"{key} {1e3 * (time.perf_counter() - began):.1f} ms")
    long = long_answer(tokens)
    decode_rate(engine, 4, long, template, 1)  # warm both paths
    free, n_free = decode_rate(engine, tokens, None, template, repeat)
    constrained, n_constrained = decode_rate(engine, tokens, long, template, repeat)
    ratio = constrained / free if free else float("nan")
    return [f"| {name} | {free:.1f} ({n_free}) | {constrained:.1f} ({n_constrained}) | {ratio:.2f} "
            f"| {setup:.1f} | {', '.join(compiles)} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="a GGUF (default: the 270M demo GGUF)")
    parser.add_argument("--hf", type=Path, help="a transformers checkpoint folder")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    if args.gguf is None:
        from medgem.demo.build import demo_gguf_path

        args.gguf = demo_gguf_path()
    engine = load_engine("llamacpp", resolve_checkpoint(args.gguf), LlamaCppOptions(n_ctx=2048))
    try:
        rows += measure(f"llama.cpp {args.gguf.name}", engine, args.tokens, "completion", args.repeat)
    finally:
        engine.close()
    if args.hf is not None:
        engine = load_engine("hf", resolve_checkpoint(args.hf), HFOptions())
        try:
            rows += measure(f"transformers {args.hf.name}", engine, args.tokens, "chat", args.repeat)
        finally:
            engine.close()
    print("\n| engine | free tok/s (tokens) | constrained tok/s (tokens) | constrained / free "
          "| tokenizer setup s | schema compile |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
