"""The remote engine: any OpenAI-compatible chat server (vLLM, medgem's own ``serve``).

This is how medgem scales past one machine: vLLM runs the model with tensor/pipeline
parallelism; medgem keeps inputs, prompts, the thinking split and the audit trail in front.
A server that splits thinking itself returns ``reasoning_content`` (vLLM: ``reasoning``); it is
wrapped back into ``<unused94>thought\\n ... <unused95>`` so the answer stage splits it as usual.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medgem.engines.base import (
    Capabilities,
    EngineEvent,
    Finished,
    FinishReason,
    ModelInfo,
    Prepared,
    TextDelta,
    Timings,
    Usage,
    as_prepared,
)
from medgem.errors import (
    EngineUnavailableError,
    RemoteError,
    UnsupportedInputError,
    require,
)
from medgem.request import ImagePart, Request, TextPart
from medgem.request.thinking import THOUGHT_CLOSE, THOUGHT_OPEN

if TYPE_CHECKING:
    import openai

    from medgem.engines import EngineOptions

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_TOKENS_PER_IMAGE = 256
# The reasoning field of a streamed delta: vLLM wrote reasoning_content, and reasoning since
# late 2025; medgem's own server sends both.
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def load_remote(model: str, options: EngineOptions) -> RemoteEngine:
    """Connect to an OpenAI-compatible server and check that it serves ``model``.

    Args:
        model: the model id the server knows.
        options: ``base_url`` (default $MEDGEM_BASE_URL, $OPENAI_BASE_URL or 127.0.0.1:8000/v1)
            and ``api_key`` (default $MEDGEM_API_KEY or $OPENAI_API_KEY).

    Raises:
        EngineUnavailableError: the server cannot be reached.
        RemoteError: the server refused (wrong key, unknown model).
    """
    base_url = (options.base_url or os.environ.get("MEDGEM_BASE_URL")
                or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
    api_key = options.api_key or os.environ.get("MEDGEM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return RemoteEngine(str(model), base_url, api_key)


class RemoteEngine:
    """Streams chat completions through the official ``openai`` client.

    Args:
        model: the server's model id.
        base_url: the API root, e.g. ``http://host:8000/v1`` (``/v1`` is added when missing).
        api_key: sent as a bearer token (servers without keys ignore the placeholder sent
            when there is none).
        timeout: seconds to wait for each read (long prefills of big prompts need minutes).
    """

    name = "remote"

    def __init__(self, model: str, base_url: str, api_key: str | None = None, *,
                 timeout: float = 600.0) -> None:
        client: Any = require("openai", "remote", "the remote engine")
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self._openai = client
        self._client: openai.OpenAI = client.OpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", max_retries=0,
            timeout=client.Timeout(timeout, connect=10.0),
        )
        card = self._model_card(model)
        meta = card.get("medgem") or {}
        from medgem.request.variants import find_variant

        variant = meta.get("variant") or (v.key if (v := find_variant(model)) else None)
        self.info = ModelInfo(
            id=model, revision=meta.get("revision"), variant=variant, engine="remote",
            dtype=str(meta.get("dtype") or "remote"), quantization=meta.get("quantization"),
            demo=bool(meta.get("demo", False)),
            context_length=int(card.get("max_model_len") or meta.get("context_length") or 131072),
            path=self.base_url,
        )
        self.capabilities = Capabilities(
            images=bool(meta.get("images", True)), thinking=bool(meta.get("thinking", True)),
            batching="concurrent",  # the server batches what it is sent at once
        )

    def _model_card(self, model: str) -> dict[str, Any]:
        with self._errors("cannot reach the server at"):
            cards = [card.model_dump() for card in self._client.models.list()]
        for card in cards:
            if card.get("id") == model:
                return card
        served = ", ".join(str(c.get("id")) for c in cards) or "none"
        raise RemoteError(404, f"the server at {self.base_url} does not serve '{model}'",
                          f"it serves: {served}", "model_not_found")

    # --- the Engine protocol -------------------------------------------------------------------

    def generate(self, request: Request | Prepared,
                 cancel: threading.Event | None = None) -> Iterator[EngineEvent]:
        """Stream one chat completion; stops (closing the connection) when ``cancel`` is set."""
        started = time.monotonic()
        prepared = as_prepared(self, request)
        request = prepared.request
        first: float | None = None
        reason: FinishReason = "stop"
        usage: Any = None
        pieces = 0
        in_thought = False
        with self._errors("the connection failed to"):
            stream = self._client.chat.completions.create(**self._body(request))
            with stream:
                for chunk in stream:
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break  # leaving the block closes the connection: the server stops
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        extra = choice.delta.model_extra or {}
                        thought = next((extra[f] for f in _REASONING_FIELDS if extra.get(f)), None)
                        for piece, thinking in ((thought, True), (choice.delta.content, False)):
                            if not piece:
                                continue
                            if thinking and not in_thought:
                                yield TextDelta(f"{THOUGHT_OPEN}thought\n")
                            elif not thinking and in_thought:
                                yield TextDelta(THOUGHT_CLOSE)
                            in_thought = thinking
                            first = first if first is not None else time.monotonic() - started
                            pieces += 1
                            yield TextDelta(piece)
                        if choice.finish_reason:
                            reason = "length" if choice.finish_reason == "length" else "stop"
        if in_thought and reason == "stop":
            yield TextDelta(THOUGHT_CLOSE)  # a finished thought with an empty answer
        total = time.monotonic() - started
        completion = int(getattr(usage, "completion_tokens", 0) or pieces)
        prompt = int(getattr(usage, "prompt_tokens", 0) or prepared.prompt_tokens)
        yield Finished(reason, Usage(prompt, completion), Timings(first or total, total, completion))

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """The client's exceptions as medgem errors: unreachable, refused, or failed mid-answer."""
        client = self._openai
        try:
            yield
        except client.APIConnectionError as exc:
            raise EngineUnavailableError(
                f"{what} {self.base_url} ({type(exc).__name__})",
                "start it (e.g. `medgem serve` or `vllm serve`), fix --base-url, or check that "
                "it is still running",
            ) from exc
        except client.APIStatusError as exc:
            raise _refused(exc) from exc
        except client.APIError as exc:  # an error event inside the stream
            body = exc.body if isinstance(exc.body, dict) else {}
            raise RemoteError(502, f"the server failed mid-answer: {exc.message}", None,
                              body.get("code")) from exc

    def prepare(self, request: Request) -> Prepared:
        """An estimate of the prompt's size (the server counts exactly and refuses what does
        not fit); the messages are encoded for the wire when sent."""
        chars = sum(len(m.text) for m in request.messages)
        return Prepared(request, chars // 4 + _TOKENS_PER_IMAGE * len(request.images))

    def close(self) -> None:
        self._client.close()

    # --- requests ----------------------------------------------------------------------------

    def _body(self, request: Request) -> dict[str, Any]:
        if request.template != "chat":
            raise UnsupportedInputError(
                "the remote engine speaks the chat API; pre-trained (completion) models are not supported",
                "use an instruction-tuned model (-it) or run the pt model locally",
            )
        options = request.options
        body: dict[str, Any] = {
            "model": self.info.id, "messages": [_message(m.role, m.parts) for m in request.messages],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": options.budget, "temperature": options.temperature,
        }
        if options.top_p != 1.0:
            body["top_p"] = options.top_p
        if options.seed is not None:
            body["seed"] = options.seed
        if options.stop:
            body["stop"] = list(options.stop)
        return body


def _message(role: str, parts: tuple[Any, ...]) -> dict[str, Any]:
    if all(isinstance(p, TextPart) for p in parts):
        return {"role": role, "content": "".join(p.text for p in parts)}
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ImagePart):
            content.append({"type": "image_url", "image_url": {"url": _png_data_url(part.image)}})
        else:
            content.append({"type": "text", "text": part.text})
    return {"role": role, "content": content}


def _png_data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the server sees the pixels we prepared
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _refused(exc: Any) -> RemoteError:
    """An HTTP error answer as a RemoteError with the server's message and a hint."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body
    message = str(error.get("message") or exc.message)
    status = int(exc.status_code)
    hint = None
    if status in (401, 403):
        hint = "pass --api-key or set MEDGEM_API_KEY"
    elif status == 429:
        retry = exc.response.headers.get("retry-after", "a few")
        hint = f"the server is busy; retry after {retry} s"
    return RemoteError(status, f"the server refused: {message}", hint, error.get("code"))
