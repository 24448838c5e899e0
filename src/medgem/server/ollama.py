"""Ollama's API on medgem's server, for the clients that speak it (Open WebUI, Enchanted, editor
plugins, the `ollama` Python client): ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``,
``/api/chat`` and ``/api/generate`` (NDJSON streams, or one body with ``stream: false``).

The generating routes run through the same skeleton as the OpenAI routes
(:meth:`Serving.answer`): the same API keys, body limits, image limits, token budget, queue,
audit record and refusal records; only the shape of the answer differs (:class:`OllamaReplies`).
Every answer carries medgem's caveat and demo label in a ``medgem`` object, as the OpenAI
routes do. Refusals are Ollama's ``{"error": "..."}`` bodies. ``format`` ("json" or a JSON
schema) constrains the answer as ``response_format`` does. Ollama's options that change the
answer and that medgem cannot honour (``top_k``, ``repeat_penalty``, ...) are refused by name;
its runtime hints (``num_ctx``, ``num_thread``, ``keep_alive``, ...) are accepted and have no
effect (the model and its context are set when the server starts). ``/api/ask`` is medgem's own
route (the web page), not Ollama's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from medgem import __version__
from medgem.answer import AnswerChunk, ThinkingChunk
from medgem.errors import ApiError
from medgem.request import GenerationOptions
from medgem.server.http_errors import ollama_error_body, ollama_error_response
from medgem.server.openai_answers import finish_reason, medgem_extra
from medgem.server.protocol import _Body, _Strict, stop_strings
from medgem.server.queue import Completed, Failed, Job
from medgem.server.routes import ServingDep, User
from medgem.server.serving import Serving
from medgem.server.structured import format_constraint, require_constrained


class _JsonBodies(APIRoute):
    """Ollama's own examples post JSON with `curl -d`, which labels it a form: its bodies are
    read as JSON whatever the label says (Ollama does the same)."""

    def get_route_handler(self) -> Callable[[HttpRequest], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def as_json(http: HttpRequest) -> Response:
            if http.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                http.scope["headers"] = [(k, v) for k, v in http.scope["headers"]
                                         if k != b"content-type"] + [(b"content-type", b"application/json")]
                http = HttpRequest(http.scope, http.receive)
            return await handle(http)

        return as_json


# Ollama's published API is these routes' contract, not medgem's OpenAPI document (which the
# suite fuzzes against medgem's own shapes): they are tested with Ollama's official client.
router = APIRouter(strict_content_type=False, route_class=_JsonBodies, include_in_schema=False)
NDJSON = "application/x-ndjson"
#: Ollama options that only steer where and how the model runs (set at `medgem serve` here).
RUNTIME_HINTS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap",
                           "use_mlock", "numa", "low_vram", "vocab_only", "num_keep"})
ANSWER_OPTIONS = ("num_predict", "temperature", "top_p", "seed", "stop")


# --- bodies ------------------------------------------------------------------------------------


class OllamaMessage(_Strict):
    role: str
    content: str | None = None
    images: list[str] | None = None  # base64, as Ollama sends them
    thinking: str | None = None  # an earlier answer's thought, echoed back: not sent to the model
    tool_calls: list[Any] | None = None
    tool_name: str | None = None


class _Generating(_Body):
    model: str
    stream: bool = True
    think: bool | str | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OllamaChatRequest(_Generating):
    """``POST /api/chat``."""

    messages: list[OllamaMessage] = Field(min_length=1)
    tools: list[Any] | None = None


class OllamaGenerateRequest(_Generating):
    """``POST /api/generate``."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class ShowRequest(_Body):
    model: str | None = None
    name: str | None = None  # what older clients send
    verbose: bool | None = None


# --- turning a body into the one request --------------------------------------------------


def generation_options(body: _Generating) -> GenerationOptions:
    """Ollama's ``options`` and ``think`` as medgem's options (medgem's defaults, greedy
    decoding among them, where the body says nothing).

    Raises:
        ApiError: a ``format`` that is neither "json" nor a usable JSON schema,
            log-probabilities, or an option medgem cannot honour.
    """
    constraint = format_constraint(body.format)
    if body.logprobs or body.top_logprobs:
        raise ApiError(400, "log-probabilities are not available from medgem", "drop logprobs",
                       code="unsupported_parameter", param="logprobs")
    options = dict(body.options or {})
    unknown = sorted(set(options) - RUNTIME_HINTS - set(ANSWER_OPTIONS))
    if unknown:
        raise ApiError(400, f"option '{unknown[0]}' is not supported by medgem",
                       f"drop it; medgem takes {', '.join(ANSWER_OPTIONS)}",
                       code="unsupported_parameter", param=f"options.{unknown[0]}")
    budget = options.get("num_predict")
    try:
        return GenerationOptions(
            max_new_tokens=None if budget is None or int(budget) < 0 else int(budget),
            temperature=float(options.get("temperature", 0.0)),
            top_p=float(options.get("top_p", 1.0)),
            seed=None if options.get("seed") is None else int(options["seed"]),
            stop=stop_strings(options.get("stop")),
            think=bool(body.think) and body.think not in ("false", "off", "none"),
            constraint=constraint)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"an option is not a number: {exc}", "check options",
                       code="invalid_value", param="options") from None
    except Exception as exc:  # GenerationOptions' own range checks (InputError)
        raise ApiError(400, str(exc).replace("max_new_tokens", "options.num_predict"),
                       "check options", code="invalid_value", param="options") from None


def _turn(role: str, text: str, images: list[str] | None) -> dict[str, Any]:
    """One OpenAI message: the text, after its images (base64, as Ollama sends them) if any."""
    # The readers sniff the bytes (PNG, JPEG, DICOM...): the MIME type is not needed.
    parts = [{"type": "image_url",
              "image_url": {"url": f"data:application/octet-stream;base64,{data}"}}
             for data in images or []]
    return {"role": role, "content": [*parts, {"type": "text", "text": text}] if parts else text}


def chat_messages(body: OllamaChatRequest) -> list[dict[str, Any]]:
    """Ollama's messages as the OpenAI messages ``request_from_openai`` reads.

    Raises:
        ApiError: tools, tool turns or an unknown role.
    """
    if body.tools:
        raise ApiError(400, "tools are not available from medgem", "drop tools",
                       code="unsupported_parameter", param="tools")
    for index, message in enumerate(body.messages):
        if message.role not in ("system", "user", "assistant") or message.tool_calls:
            raise ApiError(400, f"messages[{index}]: role '{message.role}' or tool calls are not "
                           "available from medgem", "send system, user and assistant turns",
                           code="invalid_value", param=f"messages[{index}].role")
    return [_turn(message.role, message.content or "", message.images) for message in body.messages]


def generate_messages(body: OllamaGenerateRequest) -> list[dict[str, Any]]:
    """``/api/generate``'s prompt (with its images and system) as one user turn.

    Raises:
        ApiError: raw prompts, templates, suffixes or a context from an earlier answer (medgem
            builds MedGemma's own prompt and keeps no token context between requests).
    """
    for name in ("raw", "template", "suffix", "context"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not available from medgem (it builds MedGemma's own "
                           "prompt)", f"drop {name}; use /api/chat for a conversation",
                           code="unsupported_parameter", param=name)
    user = _turn("user", body.prompt or "", body.images)
    return ([{"role": "system", "content": body.system}] if body.system else []) + [user]


# --- answers in Ollama's shape ---------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class OllamaReplies:
    """Answers shaped as Ollama's: ``message`` pieces (chat) or ``response`` pieces (generate),
    a last object with ``done: true``, the counts and durations, and medgem's caveat."""

    def __init__(self, kind: str, serving: Serving) -> None:
        self.kind = kind  # "chat" or "generate"
        self.serving = serving

    def _piece(self, text: str = "", thinking: str | None = None) -> dict[str, Any]:
        body = {"model": self.serving.served_name, "created_at": _now()}
        thought = {"thinking": thinking} if thinking is not None else {}
        if self.kind == "generate":
            return body | {"response": text} | thought | {"done": False}
        return body | {"message": {"role": "assistant", "content": text} | thought, "done": False}

    def _last(self, item: Completed, job: Job, text: str = "",
              thinking: str | None = None) -> dict[str, Any]:
        answer = item.answer
        t = answer.timings
        return self._piece(text, thinking) | {
            "done": True, "done_reason": finish_reason(answer),
            "total_duration": _ns(t.total_s + job.queue_s), "load_duration": 0,
            "prompt_eval_count": answer.usage.prompt_tokens, "prompt_eval_duration": _ns(t.first_token_s),
            "eval_count": answer.usage.completion_tokens,
            "eval_duration": _ns(t.total_s - t.first_token_s),
            "medgem": medgem_extra(item, job).model_dump(),  # the OpenAI routes' medgem object
        }

    def whole(self, item: Completed, job: Job) -> Response:
        answer = item.answer
        return JSONResponse(self._last(item, job, answer.text, answer.thinking or None))

    def stream(self, job: Job) -> Response:
        async def lines() -> AsyncIterator[str]:
            try:
                while True:
                    item = await job.out.get()
                    if isinstance(item, ThinkingChunk):
                        yield json.dumps(self._piece("", item.text)) + "\n"
                    elif isinstance(item, AnswerChunk):
                        yield json.dumps(self._piece(item.text)) + "\n"
                    elif isinstance(item, Completed):
                        yield json.dumps(self._last(item, job)) + "\n"
                        return
                    elif isinstance(item, Failed):
                        yield json.dumps(ollama_error_body(item.error)) + "\n"
                        return
            finally:  # done, or the client left: stop the job
                job.cancel.set()

        return StreamingResponse(lines(), media_type=NDJSON, headers={"Cache-Control": "no-cache"})

    def error(self, exc: BaseException) -> Response:
        return ollama_error_response(exc)


# --- what is served --------------------------------------------------------------------------


def _details(serving: Serving) -> dict[str, Any]:
    info = serving.info
    checkpoint = serving.model.checkpoint
    return {"parent_model": "", "format": "gguf" if checkpoint is not None and checkpoint.format == "gguf"
            else "safetensors", "family": "gemma3", "families": ["gemma3"],
            "parameter_size": "", "quantization_level": (info.quantization or info.dtype or "").upper()}


def _size(serving: Serving) -> int:
    checkpoint = serving.model.checkpoint
    if checkpoint is None:
        return 0
    path = Path(checkpoint.path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def _entry(serving: Serving) -> dict[str, Any]:
    info = serving.info
    digest = hashlib.sha256(f"{info.id}@{info.revision}".encode()).hexdigest()
    return {"name": serving.served_name, "model": serving.served_name,
            "modified_at": datetime.fromtimestamp(serving.created, UTC).isoformat().replace("+00:00", "Z"),
            "size": _size(serving), "digest": digest, "details": _details(serving)}


@router.get("/api/version", summary="Ollama: the server's version (medgem's)")
async def version() -> Response:
    return JSONResponse({"version": __version__, "server": "medgem"})


@router.get("/api/tags", summary="Ollama: the served model")
async def tags(user: User, serving: ServingDep) -> Response:
    return JSONResponse({"models": [_entry(serving)]})


@router.get("/api/ps", summary="Ollama: the model loaded now (always the served one)")
async def loaded(user: User, serving: ServingDep) -> Response:
    entry = _entry(serving) | {"expires_at": "9999-12-31T23:59:59Z", "size_vram": 0,
                               "context_length": serving.info.context_length}
    return JSONResponse({"models": [entry]})


@router.post("/api/show", summary="Ollama: the served model's details, capabilities and caveat")
async def show(body: ShowRequest, user: User, serving: ServingDep) -> Response:
    serving.check_model(body.model or body.name, "/api/tags", suffix=":latest")
    card = serving.model_card()
    capabilities = ["completion"] + (["vision"] if card.medgem["images"] else []) + (
        ["thinking"] if card.medgem["thinking"] else [])
    return JSONResponse({
        "modelfile": f"# served by medgem {__version__}; not an Ollama model file\nFROM {serving.info.id}\n",
        "parameters": "", "template": "", "details": _details(serving),
        "model_info": {"general.architecture": "gemma3",
                       "gemma3.context_length": serving.info.context_length},
        "capabilities": capabilities,
        "modified_at": _entry(serving)["modified_at"],
        "medgem": {"label": card.medgem["label"], "caveat": card.medgem["caveat"],
                   "revision": serving.info.revision, "engine": serving.info.engine},
    })


@router.post("/api/chat", summary="Ollama: chat (an NDJSON stream, or one body with stream: false)")
async def chat(body: OllamaChatRequest, http: HttpRequest, user: User, serving: ServingDep) -> Response:
    messages = chat_messages(body)
    return await _answer(serving, http, user, body, messages, OllamaReplies("chat", serving))


@router.post("/api/generate", summary="Ollama: one prompt (an NDJSON stream, or one body with stream: false)")
async def generate(body: OllamaGenerateRequest, http: HttpRequest, user: User,
                   serving: ServingDep) -> Response:
    if not body.prompt and not body.images:  # Ollama's "load the model" call: it is loaded
        serving.check_model(body.model, "/api/tags", suffix=":latest")
        return JSONResponse({"model": serving.served_name, "created_at": _now(), "response": "",
                             "done": True, "done_reason": "load"})
    messages = generate_messages(body)
    return await _answer(serving, http, user, body, messages, OllamaReplies("generate", serving))


async def _answer(serving: Serving, http: HttpRequest, user: str, body: _Generating,
                  messages: list[dict[str, Any]], replies: OllamaReplies) -> Response:
    options = generation_options(body)

    def check() -> None:
        serving.check_model(body.model, "/api/tags", suffix=":latest")
        require_constrained(serving.model, options.constraint, "format")
        serving.check_budget(options.max_new_tokens, "options.num_predict")

    return await serving.answer(
        http, user=user, messages=messages, check=check,
        build=lambda gone: serving.openai_request(messages, options, gone), stream=body.stream,
        include_usage=False, replies=replies)
