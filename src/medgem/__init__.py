"""medgem: run Google's MedGemma models from a CLI, Python, an OpenAI-compatible server."""

from __future__ import annotations

from medgem.answer import Answer, AnswerChunk, FinalChunk, ThinkingChunk
from medgem.api import MedGemma
from medgem.errors import MedgemError
from medgem.request import GenerationOptions, Request

__all__ = ["Answer", "AnswerChunk", "FinalChunk", "GenerationOptions", "MedGemma", "MedgemError",
           "Request", "ThinkingChunk", "load"]
__version__ = "0.1.0"


def load(model: str, **kwargs: object) -> MedGemma:
    """Shorthand for :meth:`MedGemma.load`."""
    return MedGemma.load(model, **kwargs)  # type: ignore[arg-type]
