"""The request stage: what an engine is asked to do, built the way MedGemma was trained.

``request.py`` holds the typed Request and its GenerationOptions; ``compose.py`` the official
prompt layouts (system turn, thinking instruction, images, ``SLICE n``, patches);
``openai_messages.py`` OpenAI chat messages -> Request; ``thinking.py`` the thinking markers
and their streaming splitter; ``variants.py`` the MedGemma family as data.
"""

from __future__ import annotations

from medgem.request.request import (
    GenerationOptions,
    ImagePart,
    Message,
    Part,
    Request,
    Role,
    TextPart,
)

__all__ = ["GenerationOptions", "ImagePart", "Message", "Part", "Request", "Role", "TextPart"]
