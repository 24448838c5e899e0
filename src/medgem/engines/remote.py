"""The remote engine: any OpenAI-compatible chat server (vLLM, medgem's own ``serve``).

This is how medgem scales past one machine: vLLM runs the model with tensor/pipeline
parallelism; medgem keeps inputs, prompts, the thinking split and the audit trail in front.
A server that splits thinking itself returns ``reasoning_content`` (vLLM: ``reasoning``); it is
wrapped back into ``<unused94>thought\\n ... <unused95>`` so the answer stage splits it as usual.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medgem.engines import base
from medgem.errors import (
    BackendUnavailableError,
    ContextLengthError,
    EngineUnavailableError,
    RemoteError,
    UnsupportedInputError,
    require,
)
from medgem.request import ImagePart, Request, TextPart
from medgem.request.thinking import THOUGHT_CLOSE, THOUGHT_OPEN
from medgem.request.variants import GEMMA3_CONTEXT, find_variant

if TYPE_CHECKING:
    from medgem.engines.options import RemoteOptions

log = logging.getLogger("medgem")

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_TOKENS_PER_IMAGE = 256
HEALTH_INTERVAL_S = 2.0  # between health checks, when there are several backends
# The reasoning field of a streamed delta: vLLM wrote reasoning_content, and reasoning since
# late 2025; medgem's own server sends both.
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def load_remote(model: str, options: RemoteOptions) -> RemoteEngine:
    """Connect to one or more OpenAI-compatible servers and check that they serve ``model``.

    Args:
        model: the model id the servers know.
        options: ``base_url``: one URL, or several separated by commas (default
            127.0.0.1:8000/v1); ``api_key``; ``parallel``: requests in flight to each backend.

    Raises:
        EngineUnavailableError: no server can be reached.
        RemoteError: a server refused (wrong key, unknown model).
    """
    urls = [url.strip() for url in (options.base_url or DEFAULT_BASE_URL).split(",") if url.strip()]
    return RemoteEngine(str(model), urls, options.api_key, per_backend=max(1, options.parallel))


@dataclass(eq=False)
class _Backend:
    """One server: its client, what it runs now, and whether it answers."""

    url: str
    client: Any
    in_flight: int = 0
    healthy: bool = True
    answered: int = 0


class RemoteEngine:
    """Streams chat completions through the official ``openai`` client, from one server or
    several serving the same model.

    With several, each request goes to the least-loaded healthy backend (at most
    ``per_backend`` in flight to each); a backend that fails to connect is taken out and the
    request is retried on another as long as nothing was streamed yet; a health check every
    ``HEALTH_INTERVAL_S`` puts a recovered backend back. Each answer names the backend
    that gave it (``Finished.served_by``, kept in the audit record).

    Args:
        model: the servers' model id.
        base_urls: API roots, e.g. ``http://host:8000/v1`` (``/v1`` is added when missing).
        api_key: sent as a bearer token (servers without keys ignore the placeholder sent
            when there is none).
        timeout: seconds to wait for each read (long prefills of big prompts need minutes).
        per_backend: requests in flight to one backend at once.
    """

    name = "remote"

    def __init__(self, model: str, base_urls: str | list[str], api_key: str | None = None, *,
                 timeout: float = 600.0, per_backend: int = 1) -> None:
        client: Any = require("openai", "remote", "the remote engine")
        self._openai = client
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self._backends = []
        for url in urls:
            root = url.rstrip("/")
            root = root if root.endswith("/v1") else root + "/v1"
            self._backends.append(_Backend(root, client.OpenAI(
                base_url=root, api_key=api_key or "EMPTY", max_retries=0,
                timeout=client.Timeout(timeout, connect=10.0))))
        self.base_url = self._backends[0].url
        self.per_backend = per_backend
        self._free = threading.Condition()
        card: dict[str, Any] | None = None
        unreachable: EngineUnavailableError | None = None
        for backend in self._backends:
            try:
                found = self._model_card(backend, model)  # every backend must serve the model
                card = card or found
            except EngineUnavailableError as exc:
                backend.healthy, unreachable = False, exc
        if card is None:
            assert unreachable is not None
            raise unreachable
        meta = card.get("medgem") or {}
        variant = meta.get("variant") or (v.key if (v := find_variant(model)) else None)
        # vLLM's card has max_model_len; other servers (llama.cpp's) say nothing: the server
        # then refuses what does not fit, and that refusal comes back as a context error.
        context = card.get("max_model_len") or meta.get("context_length")
        self.info = base.ModelInfo(
            id=model, revision=meta.get("revision"), variant=variant, engine="remote",
            dtype=str(meta.get("dtype") or "remote"), quantization=meta.get("quantization"),
            demo=bool(meta.get("demo", False)),
            context_length=int(context or GEMMA3_CONTEXT),
            path=",".join(b.url for b in self._backends),
        )
        self.capabilities = base.Capabilities(
            images=bool(meta.get("images", True)),
            batching="concurrent",  # the servers batch what they are sent at once
            # passed on as OpenAI's response_format; the answer is validated when it is back
            constrained=True,
        )
        self._stop = threading.Event()
        if len(self._backends) > 1:
            threading.Thread(target=self._check_health, name="medgem-backend-health",
                             daemon=True).start()

    def _model_card(self, backend: _Backend, model: str) -> dict[str, Any]:
        with self._errors(backend, "cannot reach the server at"):
            cards = [card.model_dump() for card in backend.client.models.list()]
        for card in cards:
            if card.get("id") == model:
                return card
        served = ", ".join(str(c.get("id")) for c in cards) or "none"
        raise RemoteError(404, f"the server at {backend.url} does not serve '{model}'",
                          f"it serves: {served}", "model_not_found")

    # --- backends ------------------------------------------------------------------------------

    @property
    def backends(self) -> list[dict[str, Any]]:
        """Each backend's URL, health and load (for /healthz and tests)."""
        return [{"url": b.url, "healthy": b.healthy, "in_flight": b.in_flight,
                 "answered": b.answered} for b in self._backends]

    def health(self) -> dict[str, object]:
        """The backends: each one's URL, health and load (what /healthz reports)."""
        return {"backends": self.backends}

    def _check_health(self) -> None:
        while not self._stop.wait(HEALTH_INTERVAL_S):
            for backend in self._backends:
                healthy = self._answers(backend)
                if healthy != backend.healthy:
                    log.warning("backend %s is %s", backend.url, "back" if healthy else "not answering")
                with self._free:
                    backend.healthy = healthy
                    self._free.notify_all()

    def _answers(self, backend: _Backend) -> bool:
        """Whether the backend takes connections (a busy one that is slow to list counts).
        Asked twice: the first try may meet a pooled connection the server has closed."""
        for _ in range(2):
            try:
                backend.client.with_options(timeout=2.0).models.list()
                return True
            except self._openai.APITimeoutError:
                return True
            except Exception:
                continue
        return False

    def _acquire(self, tried: set[int]) -> _Backend:
        """The least-loaded healthy backend not tried yet (waits while all are at their limit).

        Raises:
            EngineUnavailableError: no backend left that answers.
        """
        with self._free:
            while True:
                usable = [b for b in self._backends if b.healthy and id(b) not in tried]
                if not usable:
                    names = ", ".join(b.url for b in self._backends)
                    raise BackendUnavailableError(
                        f"no backend is answering ({names})",
                        "start them (e.g. `vllm serve` or `medgem serve`), or check --backend")
                ready = [b for b in usable if b.in_flight < self.per_backend]
                if ready:
                    backend = min(ready, key=lambda b: b.in_flight)
                    backend.in_flight += 1
                    return backend
                self._free.wait(1.0)

    def _release(self, backend: _Backend) -> None:
        with self._free:
            backend.in_flight -= 1
            self._free.notify_all()

    # --- the Engine protocol -------------------------------------------------------------------

    def generate(self, request: Request | base.Prepared,
                 cancel: threading.Event | None = None) -> Iterator[base.EngineEvent]:
        """Stream one chat completion; stops (closing the connection) when ``cancel`` is set.
        A backend that cannot be reached before anything streamed is left for another."""
        prepared = base.as_prepared(self, request)
        tried: set[int] = set()
        while True:
            backend = self._acquire(tried)
            streamed = False
            try:
                for event in self._stream(backend, prepared, cancel):
                    streamed = True
                    yield event
                backend.answered += 1
                return
            except EngineUnavailableError:
                with self._free:
                    backend.healthy = len(self._backends) == 1  # one backend: nothing to route around
                if streamed or len(self._backends) == 1:
                    raise
                tried.add(id(backend))
                log.warning("backend %s failed before answering; trying another", backend.url)
            finally:
                self._release(backend)

    def _stream(self, backend: _Backend, prepared: base.Prepared,
                cancel: threading.Event | None) -> Iterator[base.EngineEvent]:
        started = time.monotonic()
        request = prepared.request
        first: float | None = None
        reason: base.FinishReason | None = None
        usage: Any = None
        pieces = 0
        in_thought = False
        audit_id: str | None = None
        with self._errors(backend, "the connection failed to"):
            stream = backend.client.chat.completions.create(**self._body(request))
            with stream:
                for chunk in stream:
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break  # leaving the block closes the connection: the server stops
                    usage = chunk.usage or usage
                    # A medgem server names the audit record it wrote on its last chunk.
                    audit_id = _audit_id(chunk.model_extra) or audit_id
                    for choice in chunk.choices:
                        extra = choice.delta.model_extra or {}
                        thought = next((extra[f] for f in _REASONING_FIELDS if extra.get(f)), None)
                        for piece, thinking in ((thought, True), (choice.delta.content, False)):
                            if not piece:
                                continue
                            if thinking and not in_thought:
                                yield base.TextDelta(f"{THOUGHT_OPEN}thought\n")
                            elif not thinking and in_thought:
                                yield base.TextDelta(THOUGHT_CLOSE)
                            in_thought = thinking
                            first = first if first is not None else time.monotonic() - started
                            pieces += 1
                            yield base.TextDelta(piece)
                        if choice.finish_reason:
                            reason = "length" if choice.finish_reason == "length" else "stop"
        if reason is None and not self._answers(backend):
            raise BackendUnavailableError(f"the server at {backend.url} stopped mid-answer",
                                         "retry: another backend takes it, or restart this one")
        if reason is None:  # e.g. llama.cpp's server ends a refused stream with no error event
            raise RemoteError(
                502, f"the server at {backend.url} ended the answer without a finish reason "
                "(it may have refused the prompt, e.g. one longer than its context)",
                "check the server's log; shorten the prompt or serve a longer context",
                "incomplete_answer")
        if in_thought and reason == "stop":
            yield base.TextDelta(THOUGHT_CLOSE)  # a finished thought with an empty answer
        total = time.monotonic() - started
        completion = int(getattr(usage, "completion_tokens", 0) or pieces)
        prompt = int(getattr(usage, "prompt_tokens", 0) or prepared.prompt_tokens)
        yield base.Finished(reason, base.Usage(prompt, completion),
                            base.Timings(first or total, total, completion), served_by=backend.url,
                            audit_id=audit_id)

    @contextmanager
    def _errors(self, backend: _Backend, what: str) -> Iterator[None]:
        """The client's exceptions as medgem errors: unreachable, refused, or failed mid-answer."""
        import httpx

        client = self._openai
        try:
            yield
        except (client.APIConnectionError, httpx.TransportError) as exc:
            raise BackendUnavailableError(
                f"{what} {backend.url} ({type(exc).__name__})",
                "start it (e.g. `medgem serve` or `vllm serve`), fix --base-url, or check that "
                "it is still running",
            ) from exc
        except client.APIStatusError as exc:
            raise _refused(exc) from exc
        except client.APIError as exc:  # an error event inside the stream
            body = exc.body if isinstance(exc.body, dict) else {}
            raise RemoteError(502, f"the server failed mid-answer: {exc.message}", None,
                              body.get("code")) from exc

    def prepare(self, request: Request) -> base.Prepared:
        """An estimate of the prompt's size (the server counts exactly and refuses what does
        not fit); the messages are encoded for the wire when sent."""
        chars = sum(len(m.text) for m in request.messages)
        return base.Prepared(request, chars // 4 + _TOKENS_PER_IMAGE * len(request.images))

    def close(self) -> None:
        self._stop.set()
        for backend in self._backends:
            backend.client.close()

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
        if options.constraint is not None:
            body["response_format"] = options.constraint.response_format()
        return body


def _message(role: str, parts: tuple[Any, ...]) -> dict[str, Any]:
    if all(isinstance(p, TextPart) for p in parts):
        return {"role": role, "content": "".join(p.text for p in parts)}
    return {"role": role, "content": [
        {"type": "image_url", "image_url": {"url": _png_data_url(p.image)}}
        if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in parts
    ]}


def _png_data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the server sees the pixels we prepared
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _refused(exc: Any) -> RemoteError | ContextLengthError:
    """An HTTP error answer as a RemoteError with the server's message and a hint."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body
    message = str(error.get("message") or exc.message)
    status = int(exc.status_code)
    if error.get("code") == "context_length_exceeded" or "context length" in message:
        return ContextLengthError(f"the server refused: {message}",
                                  "shorten the prompt (fewer images or slices), or serve the "
                                  "model with a longer context (vllm serve --max-model-len)")
    hint = None
    if status in (401, 403):
        hint = "pass --api-key or set MEDGEM_API_KEY"
    elif status == 429:
        retry = exc.response.headers.get("retry-after", "a few")
        hint = f"the server is busy; retry after {retry} s"
    return RemoteError(status, f"the server refused: {message}", hint, error.get("code"))


def _audit_id(extra: dict[str, Any] | None) -> str | None:
    """The ``medgem.audit_id`` a medgem server puts on a chunk; None from any other server."""
    medgem = (extra or {}).get("medgem")
    found = medgem.get("audit_id") if isinstance(medgem, dict) else None
    return found if isinstance(found, str) and found else None
