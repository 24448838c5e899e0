"""The answer stage: an engine's stream -> thinking and answer chunks and the final Answer, with
stop strings cut, the intended-use caveat and demo labels attached (``chunks.py``), and box
localizations drawn (``boxes.py``)."""

from __future__ import annotations

from medgem.answer.chunks import (
    DEMO_LABEL,
    INTENDED_USE_CAVEAT,
    NOT_MEDGEMMA_LABEL,
    OTHER_MODEL_CAVEAT,
    TEST_MODEL_LABEL,
    Answer,
    AnswerChunk,
    FinalChunk,
    StreamChunk,
    ThinkingChunk,
    assemble,
    label_for,
)

__all__ = ["DEMO_LABEL", "INTENDED_USE_CAVEAT", "NOT_MEDGEMMA_LABEL", "OTHER_MODEL_CAVEAT", "TEST_MODEL_LABEL", "Answer", "AnswerChunk",
           "FinalChunk", "StreamChunk", "ThinkingChunk", "assemble", "label_for"]
