"""The remote engine: any OpenAI-compatible chat server (vLLM, medgem's own ``serve``).

This is how medgem scales past one machine: vLLM runs the model with tensor/pipeline
parallelism; medgem keeps inputs, prompts, the thinking split and the audit trail in front.
A server that splits thinking itself returns ``reasoning_content`` (vLLM: ``reasoning``); it is
wrapped back into ``<unused94>thought\\n ... <unused95>`` so the answer stage splits it as usual.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from medgem.engines.base import (
    Capabilities,
    EngineEvent,
    Finished,
    FinishReason,
    ModelInfo,
    TextDelta,
    Timings,
    Usage,
)
from medgem.errors import EngineUnavailableError, MedgemError, UnsupportedInputError, require
from medgem.request import ImagePart, Request, TextPart
from medgem.thinking import THOUGHT_CLOSE, THOUGHT_OPEN

if TYPE_CHECKING:
    import httpx

    from medgem.engines import EngineOptions

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_TOKENS_PER_IMAGE = 256


class RemoteError(MedgemError):
    """The remote server refused a request; status and code are the server's."""

    def __init__(self, status: int, message: str, hint: str | None, code: str | None) -> None:
        super().__init__(message, hint)
        self.status = status if 400 <= status < 600 else 502
        self.code = code or "remote_error"


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
    base_url = options.base_url or os.environ.get("MEDGEM_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    api_key = options.api_key or os.environ.get("MEDGEM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return RemoteEngine(model, base_url, api_key)


class RemoteEngine:
    """Streams chat completions over HTTP (server-sent events) with httpx.

    Args:
        model: the server's model id.
        base_url: the API root, e.g. ``http://host:8000/v1`` (``/v1`` is added when missing).
        api_key: sent as a bearer token.
        timeout: seconds to wait for each read (long prefills of big prompts need minutes).
        transport: an httpx transport (tests).
    """

    name = "remote"

    def __init__(
        self, model: str, base_url: str, api_key: str | None = None, *, timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        httpx_module: Any = require("httpx", "remote", "the remote engine")
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: httpx.Client = httpx_module.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx_module.Timeout(timeout, connect=10.0),
        )
        card = self._model_card(model)
        meta = card.get("medgem") or {}
        from medgem.variants import find_variant

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
        )

    def _model_card(self, model: str) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.get("/models")
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(
                f"cannot reach the server at {self.base_url} ({type(exc).__name__})",
                "start it (e.g. `medgem serve` or `vllm serve`) or fix --base-url",
            ) from exc
        _raise_for_error(response)
        cards = response.json().get("data", [])
        for card in cards:
            if card.get("id") == model:
                return dict(card)
        served = ", ".join(str(c.get("id")) for c in cards) or "none"
        raise RemoteError(404, f"the server at {self.base_url} does not serve '{model}'",
                          f"it serves: {served}", "model_not_found")

    # --- the Engine protocol -------------------------------------------------------------------

    def generate(self, request: Request, cancel: threading.Event | None = None) -> Iterator[EngineEvent]:
        """Stream one chat completion; stops (closing the connection) when ``cancel`` is set."""
        import httpx

        started = time.monotonic()
        first: float | None = None
        body = self._body(request)
        reason: FinishReason = "stop"
        usage: dict[str, Any] = {}
        pieces = 0
        in_thought = False
        try:
            with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                for chunk in _events(response.iter_lines()):
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    if "error" in chunk:
                        error = chunk["error"] or {}
                        raise RemoteError(502, f"the server failed mid-answer: {error.get('message')}", None, error.get("code"))
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        text = delta.get("content")
                        for piece, thinking in ((thought, True), (text, False)):
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
                        if choice.get("finish_reason"):
                            reason = "length" if choice["finish_reason"] == "length" else "stop"
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(
                f"the connection to {self.base_url} failed ({type(exc).__name__})",
                "check that the server is still running",
            ) from exc
        if in_thought and reason == "stop":
            yield TextDelta(THOUGHT_CLOSE)  # a finished thought with an empty answer
        total = time.monotonic() - started
        completion = int(usage.get("completion_tokens") or pieces)
        prompt = int(usage.get("prompt_tokens") or self.count_prompt_tokens(request))
        yield Finished(reason, Usage(prompt, completion), Timings(first or total, total, completion))

    def count_prompt_tokens(self, request: Request) -> int:
        """An estimate (the server counts exactly and refuses what does not fit)."""
        chars = sum(len(m.text) for m in request.messages)
        return chars // 4 + _TOKENS_PER_IMAGE * len(request.images)

    def close(self) -> None:
        self._http.close()

    # --- requests ----------------------------------------------------------------------------

    def _body(self, request: Request) -> dict[str, Any]:
        if request.template != "chat":
            raise UnsupportedInputError(
                "the remote engine speaks the chat API; pre-trained (completion) models are not supported",
                "use an instruction-tuned model (-it) or run the pt model locally",
            )
        settings = request.settings
        body: dict[str, Any] = {
            "model": self.info.id, "messages": [_message(m.role, m.parts) for m in request.messages],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
        }
        if settings.top_p != 1.0:
            body["top_p"] = settings.top_p
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.stop:
            body["stop"] = list(settings.stop)
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


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events' JSON payloads, until ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if data:
            yield json.loads(data)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error") or {}
        message, code = str(error.get("message") or response.text), error.get("code")
    except ValueError:
        message, code = response.text[:300], None
    hint = None
    if response.status_code in (401, 403):
        hint = "pass --api-key or set MEDGEM_API_KEY"
    elif response.status_code == 429:
        hint = f"the server is busy; retry after {response.headers.get('retry-after', 'a few')} s"
    raise RemoteError(response.status_code, f"the server refused: {message}", hint, code)
