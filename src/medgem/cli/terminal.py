"""An answer on the terminal: streamed (or collected for --json) with its thought, stats, caveat
and label; a cancelled answer's record; the label before the first word."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from medgem.answer import Answer, AnswerChunk, FinalChunk, StreamChunk, ThinkingChunk
from medgem.api import MedGemma
from medgem.cli.progress import until_first


class Shown:
    """What :func:`render` has written so far: the answer and thought pieces, and when it began
    (what a cancelled answer's record keeps)."""

    def __init__(self) -> None:
        import time

        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.started = time.monotonic()
        self.first: float | None = None


def render(
    chunks: Iterable[StreamChunk],
    *,
    as_json: bool,
    show_thinking: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    prefix: str = "",
    shown: Shown | None = None,
) -> Answer:
    """Stream an answer to the terminal (or collect it for --json) and return it.

    Until the first chunk comes (the prompt and its images being read) a stage line waits on
    ``err`` when it is a terminal; ``prefix`` (chat's ``medgemma> ``) is written to ``out``
    once that line is gone. ``shown`` collects what was written (for a Ctrl-C's record).
    ``out``/``err`` default to the streams current at the call (not at import).
    """
    import time

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    shown = shown if shown is not None else Shown()
    answer: Answer | None = None
    thinking_open = False
    for chunk in until_first(iter(chunks), "reading the prompt", err):
        if shown.first is None:
            shown.first = time.monotonic()
        if prefix and not as_json:
            out.write(prefix)
            out.flush()
            prefix = ""
        if isinstance(chunk, FinalChunk):
            answer = chunk.answer
            continue
        if isinstance(chunk, ThinkingChunk):
            shown.thinking.append(chunk.text)
            if show_thinking and not as_json:
                if not thinking_open:
                    err.write("[thinking]\n")
                    thinking_open = True
                err.write(chunk.text)
                err.flush()
        elif isinstance(chunk, AnswerChunk):
            shown.answer.append(chunk.text)
            if as_json:
                continue
            if thinking_open:
                err.write("\n[/thinking]\n")
                err.flush()
                thinking_open = False
            out.write(chunk.text)
            out.flush()
    assert answer is not None  # assemble() always ends with a FinalChunk
    if as_json:
        out.write(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return answer
    out.write("\n")
    if show_thinking and not answer.thinking:
        err.write("medgem: no thinking: the model wrote no thought before its answer "
                  "(--think asks a thinking variant to think first)\n")
    if not answer.text.strip():
        err.write(f"medgem: the answer is empty (the model ended after "
                  f"{answer.usage.completion_tokens} token(s) with no text; finish reason: "
                  f"{answer.finish_reason})\n")
    if answer.thought_truncated:
        err.write(
            "medgem: the answer budget ran out while the model was thinking; raise "
            "--max-new-tokens for an answer\n"
        )
    elif answer.finish_reason == "length":
        err.write("medgem: the answer was cut at --max-new-tokens\n")
    if answer.structured_error:
        err.write(f"medgem: not valid JSON for the schema: {answer.structured_error}\n")
    if answer.caveat:
        err.write(f"\n⚠ {answer.caveat}\n")
    if answer.label:
        err.write(f"[{answer.label}]\n")
    err.write(_stats(answer) + "\n")
    return answer


def speed_words(answer: Answer) -> str:
    """The decode speed as words that do not lie: a one-token answer has none, and an answer
    whose tokens all came at the end (no text before it) was not measured."""
    tokens = answer.usage.completion_tokens
    t = answer.timings
    decode = t.total_s - t.first_token_s
    if tokens <= 1:
        return "no decode speed (one token)" if tokens == 1 else "no tokens"
    if decode <= 0:
        return "decode speed not measured (no text before the end)"
    return f"{(tokens - 1) / decode:.1f} tok/s"


def _stats(answer: Answer) -> str:
    t = answer.timings
    tokens = answer.usage.completion_tokens
    return (
        f"[{answer.model.id}"
        + (f" + adapter {answer.model.adapter}@{answer.model.adapter_sha256[:12]}"
           if answer.model.adapter and answer.model.adapter_sha256 else "")
        + f" · {answer.model.engine} · {answer.usage.prompt_tokens} prompt + "
        f"{tokens} answer token{'' if tokens == 1 else 's'} · first token {t.first_token_s:.2f} s · "
        f"{speed_words(answer)} · {answer.finish_reason}"
        + (f" · audit {answer.audit_id}" if answer.audit_id else "") + "]"
    )


def show_answer(model: MedGemma, request: Any, *, as_json: bool, show_thinking: bool,
                prefix: str = "") -> Answer | None:
    """Generate the answer to ``request`` and :func:`render` it; None when Ctrl-C stopped it: the
    generation stops where it stands and what was said is recorded as cancelled."""
    import threading

    cancel = threading.Event()
    chunks = model.generate(request, cancel)
    shown = Shown()
    try:
        return render(chunks, as_json=as_json, show_thinking=show_thinking, prefix=prefix,
                      shown=shown)
    except KeyboardInterrupt:
        cancel.set()
        close = getattr(chunks, "close", None)  # a generator: stop it where it stands
        if close is not None:
            close()
        sys.stdout.write("\n")
        _record_cancelled(model, request, shown)
        return None


def _record_cancelled(model: MedGemma, request: Any, shown: Shown) -> None:
    """After Ctrl-C: the answer so far recorded as cancelled (when this process audits), said
    on stderr with the caveat and the label, as a finished answer is."""
    import time

    from medgem.answer import label_for
    from medgem.engines.base import Timings, Usage

    now = time.monotonic()
    first = (shown.first or now) - shown.started
    answer = Answer(text="".join(shown.answer).strip(), thinking="".join(shown.thinking).strip(),
                    finish_reason="cancelled", usage=Usage(0, 0),
                    timings=Timings(first, now - shown.started), model=model.engine.info,
                    caveat=model.caveat, label=label_for(model.engine.info))
    record = None
    if model.audit is not None:
        record = model.audit.answer(request, answer, model.engine.info, {})
    sys.stderr.write("\nmedgem: stopped (Ctrl-C)" + (f"; the answer so far is recorded as "
                     f"cancelled (audit {record})" if record else "") + "\n")
    if answer.caveat:
        sys.stderr.write(f"\n⚠ {answer.caveat}\n")
    if answer.label:
        sys.stderr.write(f"[{answer.label}]\n")
    sys.stderr.flush()


def print_label_first(model: MedGemma, err: TextIO = sys.stderr) -> None:
    """Demo and test models say so before any of their output appears."""
    from medgem.answer import label_for

    label = label_for(model.engine.info)
    if label:
        err.write(f"[{label}]\n")
        err.flush()
