"""Separate MedGemma's thought from its answer, whole or while streaming.

Thinking variants write ``<unused94>thought\\n ... <unused95>`` before the answer. The markers
survive ``skip_special_tokens``. MedGemma 1.5 may think without being asked, so every output is
parsed. A budget that ends mid-thought leaves an unterminated thought and an empty answer.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Literal

THOUGHT_OPEN = "<unused94>"
THOUGHT_CLOSE = "<unused95>"
_THOUGHT_LABEL = "thought"
THINK_INSTRUCTION = "SYSTEM INSTRUCTION: think silently if needed."
Kind = Literal["thinking", "answer"]
State = Literal["before", "label", "thought", "answer"]


@dataclass(frozen=True)
class Piece:
    kind: Kind
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

    The state machine: ``before`` (nothing decided yet, leading whitespace held back), ``label``
    (after the opening marker, where the ``thought`` label may follow), ``thought`` (inside the
    thought), ``answer``. Text that could be the start of a marker is held until the next delta
    decides it.
    """

    def __init__(self) -> None:
        self._state: State = "before"
        self._pending = ""
        self._answer_started = False

    def feed(self, delta: str) -> Iterator[Piece]:
        self._pending += delta
        progressed = True
        while progressed:
            progressed = yield from self._step()

    def finish(self) -> Iterator[Piece]:
        """Flush what is held back at the end of the stream."""
        rest, self._pending = self._pending, ""
        if self._state == "label" and _THOUGHT_LABEL.startswith(rest.strip()):
            return
        yield from self._pieces("thinking" if self._state in ("thought", "label") else "answer", rest)

    def _pieces(self, kind: Kind, text: str) -> Iterator[Piece]:
        if kind == "answer" and not self._answer_started:
            text = text.lstrip()
            self._answer_started = bool(text)
        if text:
            yield Piece(kind, text)

    def _step(self) -> Generator[Piece, None, bool]:
        """Yield what the held text decides; returns whether the state moved on."""
        buf = self._pending
        if self._state == "before":
            stripped = buf.lstrip()
            if stripped.startswith(THOUGHT_OPEN):
                self._pending, self._state = stripped[len(THOUGHT_OPEN) :], "label"
            elif THOUGHT_OPEN.startswith(stripped):
                return False  # could still become the opening marker
            else:
                self._state = "answer"
            return True
        if self._state == "label":
            if buf.startswith(_THOUGHT_LABEL):
                self._pending = buf[len(_THOUGHT_LABEL) :].lstrip("\n")
            elif _THOUGHT_LABEL.startswith(buf):
                return False
            self._state = "thought"
            return True
        # In the answer, a later opening marker (the model thinking again) is kept out of it.
        scan: tuple[str, Kind, State] = ((THOUGHT_CLOSE, "thinking", "answer")
                                         if self._state == "thought" else (THOUGHT_OPEN, "answer", "label"))
        marker, kind, then = scan
        index = buf.find(marker)
        if index >= 0:
            text, self._pending, self._state = buf[:index], buf[index + len(marker) :], then
        else:
            keep = partial_marker_length(buf, marker)
            text, self._pending = buf[: len(buf) - keep], buf[len(buf) - keep :]
        yield from self._pieces(kind, text)
        return index >= 0


def partial_marker_length(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
