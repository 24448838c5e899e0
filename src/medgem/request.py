"""What an engine is asked to do: chat messages (text and image parts) and generation settings.

The prompt stage builds these; engines consume them. Nothing here knows about any engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False)
class ImagePart:
    """One image as the model will see it (RGB, before the processor's resize)."""

    image: Image.Image
    source: str = ""


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings. temperature 0 means greedy, the MedGemma default."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Request:
    """A fully built prompt.

    Attributes:
        messages: the conversation; for ``template == "completion"`` a single user message whose
            text is continued as is (pre-trained checkpoints have no chat format).
        settings: generation settings.
        template: "chat" renders with the checkpoint's (or the shipped Gemma 3) chat template;
            "completion" feeds the raw text, images marked with ``<start_of_image>``.
    """

    messages: tuple[Message, ...]
    settings: GenerationSettings
    template: Literal["chat", "completion"] = "chat"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(img for m in self.messages for img in m.images)
