"""What an engine is asked to do: chat messages (text and image parts) and generation options.

The prompt stage builds these; engines consume them. Nothing here knows about any engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from medgem.errors import InputError
from medgem.structured import Constraint

if TYPE_CHECKING:
    from PIL import Image

    from medgem.inputs.options import Layout

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
class GenerationOptions:
    """How to generate: built once at each edge (CLI flags, HTTP body, eval config, Python API
    call), carried on the Request, and read, never re-declared, by every later stage.

    Attributes:
        max_new_tokens: the answer budget; None until the prompt stage fills in the variant
            family's default for the input kind (with or without thinking).
        temperature: 0 means greedy, the MedGemma default.
        top_p: nucleus sampling (temperature > 0 only).
        seed: makes sampling repeatable.
        stop: strings that end the answer (cut in the answer stage, for every engine).
        think: ask for MedGemma's silent thinking (thinking variants only).
        constraint: the JSON the answer must be (``medgem.structured.Constraint``); engines
            constrain decoding to it (after the thought when thinking) or refuse the request.

    Raises:
        InputError: a value out of range.
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    think: bool = False
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise InputError("stop strings must be non-empty text")
        object.__setattr__(self, "stop", stop)
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise InputError("constraint must be a medgem.structured.Constraint",
                             "build one with Constraint.from_schema(schema) or Constraint.json_object()")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def budget(self) -> int:
        """max_new_tokens once the prompt stage has filled it in."""
        if self.max_new_tokens is None:
            raise ValueError("max_new_tokens was never resolved (build requests with medgem.request.compose)")
        return self.max_new_tokens

    @classmethod
    def of(cls, options: GenerationOptions | None = None, **fields: Any) -> GenerationOptions:
        """``options`` (or the defaults) with the given fields set; None values are ignored.

        Raises:
            TypeError: a name that is not a generation option.
        """
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(unknown)}")
        given = {name: value for name, value in fields.items() if value is not None}
        return replace(options or cls(), **given)


@dataclass(frozen=True)
class Request:
    """A fully built prompt.

    Attributes:
        messages: the conversation; for ``template == "completion"`` a single user message whose
            text is continued as is (pre-trained checkpoints have no chat format).
        options: how to generate (max_new_tokens filled in).
        template: "chat" renders with the checkpoint's (or the shipped Gemma 3) chat template;
            "completion" feeds the raw text, images marked with ``<start_of_image>``.
        layout: how the images are laid out ("slide": patches, "volume": slices or frames,
            "images" otherwise), e.g. for what a context error advises.
    """

    messages: tuple[Message, ...]
    options: GenerationOptions
    template: Literal["chat", "completion"] = "chat"
    layout: Layout = "images"

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(img for m in self.messages for img in m.images)

    def template_messages(self) -> list[dict[str, Any]]:
        """The messages as chat templates (and transformers' processors) take them: role and
        content parts {"type": "text", "text": ...} or {"type": "image", "image": PIL image}."""
        return [{"role": message.role, "content": [
            {"type": "text", "text": part.text} if isinstance(part, TextPart)
            else {"type": "image", "image": part.image} for part in message.parts
        ]} for message in self.messages]
