"""Separate MedGemma's thought from its answer, whole or while streaming.

Thinking variants write ``<unused94>thought\\n ... <unused95>`` before the answer. The markers
survive ``skip_special_tokens``. MedGemma 1.5 may think without being asked, so every output is
parsed. A budget that ends mid-thought leaves an unterminated thought and an empty answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

THOUGHT_OPEN = "<unused94>"
THOUGHT_CLOSE = "<unused95>"
_THOUGHT_LABEL = "thought"
THINK_INSTRUCTION = "SYSTEM INSTRUCTION: think silently if needed."


@dataclass(frozen=True)
class Piece:
    kind: Literal["thinking", "answer"]
    text: str


def split_thinking(text: str) -> tuple[str, str]:
    """Split a complete output into (thinking, answer).

    Args:
        text: the decoded output, markers included.

    Returns:
        The thought (without the ``thought`` label, stripped) and the answer (stripped). An
        output with no thought gives ("", text). An unterminated thought gives (thought, "").
    """
    splitter = ThinkingSplitter()
    pieces = [*splitter.feed(text), *splitter.finish()]
    thinking = "".join(p.text for p in pieces if p.kind == "thinking")
    answer = "".join(p.text for p in pieces if p.kind == "answer")
    return thinking.strip(), answer.strip()


class ThinkingSplitter:
    """Incremental splitter: feed text deltas, get typed pieces, never emitting half a marker.

    The state machine: ``before`` (nothing decided yet, leading whitespace held back),
    ``thought`` (inside the thought), ``answer``. Text that could be the start of a marker is held
    until the next delta decides it.
    """

    def __init__(self) -> None:
        self._state: Literal["before", "label", "thought", "answer"] = "before"
        self._pending = ""
        self._answer_started = False

    def feed(self, delta: str) -> Iterator[Piece]:
        self._pending += delta
        while True:
            progressed, pieces = self._step()
            yield from pieces
            if not progressed:
                return

    def finish(self) -> Iterator[Piece]:
        """Flush what is held back at the end of the stream."""
        rest, self._pending = self._pending, ""
        if not rest:
            return
        if self._state in ("thought", "label"):
            if self._state == "label" and _THOUGHT_LABEL.startswith(rest.strip()):
                return
            yield Piece("thinking", rest)
        else:
            yield from self._answer(rest)

    def _answer(self, text: str) -> Iterator[Piece]:
        if not self._answer_started:
            text = text.lstrip()
            if not text:
                return
            self._answer_started = True
        yield Piece("answer", text)

    def _step(self) -> tuple[bool, list[Piece]]:
        buf = self._pending
        if self._state == "before":
            stripped = buf.lstrip()
            if not stripped:
                return False, []
            if stripped.startswith(THOUGHT_OPEN):
                self._pending = stripped[len(THOUGHT_OPEN) :]
                self._state = "label"
                return True, []
            if THOUGHT_OPEN.startswith(stripped):
                return False, []  # could still become the opening marker
            self._state = "answer"
            return True, []
        if self._state == "label":
            if buf.startswith(_THOUGHT_LABEL):
                self._pending = buf[len(_THOUGHT_LABEL) :].lstrip("\n")
                self._state = "thought"
                return True, []
            if _THOUGHT_LABEL.startswith(buf):
                return False, []
            self._state = "thought"
            return True, []
        if self._state == "thought":
            return self._scan(buf, THOUGHT_CLOSE, "thinking", next_state="answer")
        # answer: a later opening marker (model thinking again) is kept out of the answer.
        return self._scan(buf, THOUGHT_OPEN, "answer", next_state="label")

    def _scan(self, buf: str, marker: str, kind: Literal["thinking", "answer"],
              next_state: Literal["answer", "label"]) -> tuple[bool, list[Piece]]:
        index = buf.find(marker)
        if index >= 0:
            before, self._pending = buf[:index], buf[index + len(marker) :]
            self._state = next_state
            return True, self._emit(kind, before)
        keep = partial_marker_length(buf, marker)
        emit, self._pending = buf[: len(buf) - keep], buf[len(buf) - keep :]
        return False, self._emit(kind, emit)

    def _emit(self, kind: Literal["thinking", "answer"], text: str) -> list[Piece]:
        if not text:
            return []
        if kind == "answer":
            return list(self._answer(text))
        return [Piece("thinking", text)]


def partial_marker_length(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
