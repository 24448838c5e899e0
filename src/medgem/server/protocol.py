"""Request and response shapes of the HTTP API (OpenAI's chat completions, plus medgem's own).

Requests forbid unknown fields, so a misspelt parameter is an error rather than silently
ignored. Responses follow OpenAI's shapes; medgem adds ``reasoning_content`` (the model's
thought) and a ``medgem`` object (caveat, demo label, audit record id).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from medgem.audit import AuditRecord
from medgem.request import GenerationOptions
from medgem.structured import Constraint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Body(_Strict):
    """A whole request body: besides the fields, every string must be encodable text."""

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        where = _lone_surrogate(data, "")
        if where is not None:
            raise PydanticCustomError("invalid_unicode", "a lone UTF-16 surrogate at {where}", {"where": where})
        return data


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The JSON path of the first string (key or value) that is not encodable text, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if _lone_surrogate(key, path) is not None:
                return path
            found = _lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


# --- chat completions: request -------------------------------------------------------------


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrlContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class ImageDicom(_Strict):
    """Google's serving container's shape: a DICOMweb (or dimse://) instance/series URI or a
    list of them, and the bearer token the PACS wants."""

    dicom_source: str | list[str]
    access_credential: str | None = None


class ImageDicomContent(_Strict):
    type: Literal["image_dicom"]
    image_dicom: ImageDicom


ContentPart = Annotated[TextContent | ImageUrlContent | ImageDicomContent, Field(discriminator="type")]


class _Message(_Strict):
    name: str | None = None
    # Clients echo earlier answers back with their thought; it is not sent to the model.
    reasoning_content: str | None = None
    reasoning: str | None = None


class UserMessage(_Message):
    """A user turn: it has content (text, or at least one part), as OpenAI requires."""

    role: Literal["user"]
    content: Annotated[str, Field(min_length=1)] | Annotated[list[ContentPart], Field(min_length=1)]


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: str | list[ContentPart]


class AssistantTurn(_Message):
    """An earlier answer sent back (its content may be null, as OpenAI allows)."""

    role: Literal["assistant"]
    content: str | list[ContentPart] | None = None


ChatMessage = Annotated[UserMessage | SystemMessage | AssistantTurn, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = Field(default=False, strict=True)


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    """OpenAI's ``json_schema`` object; ``schema`` is checked when the Constraint is built (a
    400 naming an unsupported feature)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


#: ``response_format``: text (free), any JSON object, or JSON for a schema; other types refused.
ResponseFormat = Annotated[ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
                           Field(discriminator="type")]


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``. ``think`` is medgem's: ask a thinking model to think."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    # Numbers and booleans are strict (no "4" or true for a count) and finite (no NaN).
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1, strict=True)  # what torch and llama.cpp take
    n: int | None = Field(default=None, ge=1, le=1, strict=True)
    user: str | None = None
    think: bool = Field(default=False, strict=True)
    # Accepted at their neutral values only, so OpenAI clients that always send them work.
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0, strict=True, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0, strict=True, allow_inf_nan=False)
    logprobs: bool | None = Field(default=None, strict=True)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def generation_options(self, constraint: Constraint | None = None) -> GenerationOptions:
        """The body's generation fields as the one options object the request carries, with
        the constraint built from ``response_format`` (``medgem.server.structured``)."""
        return GenerationOptions(
            max_new_tokens=self.budget(), temperature=self.temperature or 0.0,
            top_p=self.top_p or 1.0, seed=self.seed, stop=stop_strings(self.stop), think=self.think,
            constraint=constraint)

    def openai_messages(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, the shape ``request_from_openai`` reads."""
        return [m.model_dump(exclude_none=True, exclude={"name", "reasoning_content", "reasoning"})
                for m in self.messages]


# --- chat completions: response ------------------------------------------------------------


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StructuredAnswer(BaseModel):
    """A constrained answer read against its schema: ``parsed`` is the JSON when ``valid``, and
    null otherwise (``error`` says why: the budget cut it, or it does not match)."""

    kind: Literal["json_object", "json_schema"]
    name: str
    sha256: str
    valid: bool
    error: str | None = None
    parsed: Any = None


class SendBack(BaseModel):
    """What became of sending an answer back to its PACS (``serve --send-back``): ``stored``
    (``record_id`` is the ``pacs_send`` record), ``failed`` (recorded too; the answer and the
    review stand), or ``not_sent`` (rejected, or the server no longer holds the study)."""

    status: Literal["stored", "failed", "not_sent"]
    message: str | None = None
    pacs: str | None = None
    reviewed: bool = False
    record_id: str | None = None


class MedgemExtra(BaseModel):
    """What every medgem answer carries besides OpenAI's fields."""

    caveat: str
    label: str
    audit_id: str | None
    queue_s: float | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    adapter: str | None = None  # the LoRA adapter that answered, and its content hash
    adapter_sha256: str | None = None
    structured: StructuredAnswer | None = None  # a constrained answer, read against its schema
    send_back: SendBack | None = None  # an image_dicom answer sent at once (--send-back-unreviewed)


class AssistantMessage(BaseModel):
    """The thought goes under both names vLLM has used: ``reasoning_content`` and (since late
    2025) ``reasoning``, so clients of either convention get it."""

    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = None
    reasoning: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageBody
    medgem: MedgemExtra


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # and ``reasoning``: see AssistantMessage
    reasoning: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageBody | None = None
    medgem: MedgemExtra | None = None


# --- models ----------------------------------------------------------------------------


class ModelCard(BaseModel):
    """One served model. ``medgem`` holds its facts: id, revision, variant, engine, dtype,
    ``label`` and ``caveat``, ``images``, ``thinking`` (trained to think), ``constrained``
    (``response_format`` JSON works) and ``medgemma`` (a recognised MedGemma variant)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "medgem"
    max_model_len: int
    medgem: dict[str, Any]


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- errors and the server's own responses ------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every refusal: OpenAI's ``{"error": {message, type, param, code}}``."""

    error: ErrorDetail


class Health(BaseModel):
    """``GET /healthz``: 200 while serving; 503 while warming up or draining."""

    status: Literal["ok", "warming", "draining"]
    model: str
    waiting: int
    busy: bool
    running: int
    backends: list[Any] | None = None


# --- the web page's own endpoints ------------------------------------------------------------


class AskRequest(_Body):
    """``POST /api/ask``: one question, optionally about one upload (image, DICOM, zip)."""

    question: str = Field(min_length=1, max_length=20000)
    image: str | None = Field(default=None, min_length=1)  # a data URL
    name: str | None = Field(default=None, max_length=255)  # the upload's file name, for messages
    think: bool = Field(default=False, strict=True)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    system: str | None = Field(default=None, max_length=20000)
    stop: str | list[str] | None = None
    # The answer as JSON: a JSON schema, or a built-in schema's name ("boxes", "lab-values",
    # "cxr-findings"); or ``format: "json"`` for any JSON object.
    schema_: dict[str, Any] | str | None = Field(default=None, alias="schema")
    format: Literal["json"] | None = None

    def generation_options(self, constraint: Constraint | None = None) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.max_tokens, stop=stop_strings(self.stop),
                                 think=self.think, constraint=constraint)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """``stop`` as OpenAI (and Ollama's ``options``) send it: one string, a list, or nothing."""
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


class PreviewRequest(_Body):
    """``POST /api/preview``: the images the model would see for an upload."""

    image: str = Field(min_length=1)  # a data URL
    name: str | None = Field(default=None, max_length=255)  # the upload's file name, for messages


class PreviewImage(BaseModel):
    url: str  # a PNG data URL
    index: int
    width: int
    height: int


class Preview(BaseModel):
    images: list[PreviewImage]
    count: int
    volume: str | None
    modalities: list[str]


class Info(BaseModel):
    """``GET /api/info``: what the page shows first (only ``auth_required`` without a key)."""

    auth_required: bool
    model: str | None = None
    label: str | None = None
    caveat: str | None = None
    images: bool | None = None
    thinking: bool | None = None
    engine: str | None = None
    revision: str | None = None
    limits: dict[str, int] | None = None


@pydantic_dataclass(frozen=True)
class Record(AuditRecord):
    """An audit record (``GET /api/records/{id}`` adds its ``reviews``)."""

    reviews: list[Record] | None = None
    send_back: SendBack | None = None  # a review's reply under --send-back


class ReviewRequest(_Body):
    """``POST /api/reviews``: a clinician's verdict on an answer."""

    record_id: str = Field(min_length=1, max_length=200)
    verdict: Literal["accept", "correct", "reject"]
    correction: str | None = Field(default=None, max_length=50000)
    note: str | None = Field(default=None, max_length=20000)
    reviewer: str | None = Field(default=None, max_length=200)
