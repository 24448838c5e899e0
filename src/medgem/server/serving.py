"""Request handlers: parse, check, queue for the engine, stream back, audit.

Each handler turns every refusal into an OpenAI-style error body (see ``server.errors``). The
engine is reached only through :class:`~medgem.api.MedGemma` behind the :class:`EngineQueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from medgem.answer import Answer, AnswerChunk, ThinkingChunk
from medgem.api import MedGemma
from medgem.audit import AuditStore
from medgem.audit.trail import AuditTrail, model_fields, settings_fields
from medgem.errors import (
    ApiError,
    AuthError,
    ClientDisconnectedError,
    InputCancelled,
    MedgemError,
    error_body,
)
from medgem.request import Request
from medgem.request.openai_messages import request_from_openai
from medgem.server import protocol as p
from medgem.server.admission import Slots
from medgem.server.auth import KeyStore, bearer_token
from medgem.server.config import ServerConfig
from medgem.server.errors import error_response, validation_error
from medgem.server.metrics import Metrics
from medgem.server.queue import (
    Completed,
    EngineQueue,
    Failed,
    Job,
    JobItem,
    Started,
)
from medgem.server.records import capture_inputs, digest_inputs

log = logging.getLogger("medgem.server")
M = TypeVar("M", bound=BaseModel)
_POLL_S = 0.2  # how often a waiting handler checks that its client is still there


class ClientGone(Exception):
    """The HTTP client disconnected."""


class Serving:
    """Everything a handler needs: config, model, audit store, keys, queue, metrics."""

    def __init__(
        self, config: ServerConfig, model: MedGemma, store: AuditStore, keys: KeyStore | None,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.model = model
        self.store = store
        self.keys = keys
        self.metrics = metrics
        self.info = model.engine.info
        self.served_name = config.model_name or self.info.id
        self.created = int(time.time())
        self.deid_key = config.deid_key or os.urandom(32)
        # The model writes each answer's audit record (one writer for every surface); the
        # server adds who asked, through which endpoint, and the inputs as sent.
        model.audit = AuditTrail(store, surface="server")
        self.queue = EngineQueue(
            lambda job: model.generate(job.request, job.cancel, audit_context=self._audit_context(job)),
            max_waiting=config.max_queue, min_retry_after=config.retry_after_s,
            workers=model.batcher.parallel,
        )
        self.previews = Slots(config.max_previews, "previews", config.retry_after_s)
        metrics.add_gauge("medgem_previews_running", "Previews decoding uploads now.",
                          lambda: float(self.previews.held))
        metrics.add_gauge("medgem_queue_depth", "Requests waiting for the engine.", lambda: self.queue.waiting)
        metrics.add_gauge("medgem_engine_busy", "Requests the engine runs now.", lambda: float(self.queue.running))
        metrics.add_gauge("medgem_batch_size", "Sequences the engine decodes together now.",
                          lambda: float(model.batcher.running))

    # --- shared steps ------------------------------------------------------------------------

    def authenticate(self, http: HttpRequest) -> str:
        """The API key's name, or "local" when the server runs without keys."""
        if self.keys is None:
            return "local"
        token = bearer_token(http.headers.get("authorization")) or http.headers.get("x-api-key")
        if not token:
            raise AuthError("an API key is required", "send 'Authorization: Bearer <key>'; make one with `medgem keys add NAME`")
        try:
            entry = self.keys.entry(token)
        except MedgemError:  # the operator's key file is broken: say so without its path
            log.exception("the API key file cannot be read")
            raise ApiError(503, "the server cannot check API keys right now",
                           "the operator must fix the key file (see the server log)",
                           code="auth_unavailable") from None
        if entry is None:
            raise AuthError("the API key is not valid or was revoked", "ask the operator for a key")
        return entry.name

    def may_read(self, user: str, record: Any) -> bool:
        """A key reads the records it made; an auditor key (or a server without keys) reads all."""
        if self.keys is None or record.body.get("user") == user:
            return True
        return any(e.name == user and e.role == "auditor" for e in self.keys.active())

    async def read_body(self, http: HttpRequest, model: type[M]) -> M:
        """Read, size-check, parse and validate a JSON body."""
        limit = self.config.max_body_bytes
        declared = http.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in http.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientDisconnectedError("the client disconnected while sending its body") from None
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc})", "send a JSON object", code="invalid_json") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        where = _lone_surrogate(data, "")
        if where is not None:  # JSON allows "\ud800"; nothing downstream can encode it
            raise ApiError(400, f"{where or 'the body'} holds a lone UTF-16 surrogate, which is not text",
                           "send valid Unicode (surrogates only in pairs)", code="invalid_unicode",
                           param=where or None)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def check_budget(self, budget: int | None) -> None:
        if budget is not None and budget > self.config.max_new_tokens:
            raise ApiError(
                400, f"max_tokens {budget} is over this server's limit of {self.config.max_new_tokens}",
                "ask for fewer tokens", code="invalid_value", param="max_tokens",
            )

    async def reject(self, user: str, endpoint: str, exc: BaseException, inputs: list[dict[str, Any]] | None) -> Response:
        """Audit a refused request, then answer with its error body."""
        status, body = error_body(exc)
        record = {"user": user, "endpoint": endpoint, "status": status, "error": body["error"], "inputs": inputs or []}
        try:
            await asyncio.to_thread(self.store.append, "rejected", record)
        except Exception:
            log.exception("could not audit a rejected request")
        self.metrics.count_request(endpoint, status)
        return error_response(exc)

    def _audit_context(self, job: Job) -> dict[str, Any]:
        ctx = job.context
        context: dict[str, Any] = {
            "record_id": ctx["record_id"], "user": ctx["user"], "endpoint": ctx["endpoint"],
            "inputs": ctx["inputs"], "served_as": self.served_name, "queue_s": job.queue_s,
        }
        if self.config.log_prompts:
            context["prompt"] = capture_inputs(self.store, ctx["messages"], self.deid_key)
        return context

    def finalize(self, job: Job, answer: Answer | None, error: BaseException | None) -> str | None:
        """After the model wrote the record of an answer or of a failure inside generation
        (worker thread, before the last byte goes out): metrics, and the record of a failure
        outside it (a client gone while waiting)."""
        if answer is not None:
            self.metrics.record_answer(
                prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                finish_reason=answer.finish_reason, queue_s=job.queue_s,
                first_token_s=answer.timings.first_token_s, total_s=answer.timings.total_s,
            )
            return answer.audit_id
        recorded = getattr(error, "audit_id", None)
        if recorded is not None:
            return str(recorded)
        ctx = job.context
        status, error_json = error_body(error or RuntimeError())
        body: dict[str, Any] = {
            "user": ctx["user"], "endpoint": ctx["endpoint"], "model": model_fields(self.info),
            "served_as": self.served_name, "settings": settings_fields(job.request),
            "inputs": ctx["inputs"], "status": status, "error": error_json["error"],
        }
        kind = "rejected" if status < 500 else "error"
        self.store.append(kind, body, record_id=ctx["record_id"])
        return str(ctx["record_id"])

    # --- chat completions --------------------------------------------------------------------

    async def chat_completions(self, http: HttpRequest) -> Response:
        endpoint = "/v1/chat/completions"
        try:
            user = self.authenticate(http)
        except MedgemError as exc:
            self.metrics.count_request(endpoint, exc.status)
            return error_response(exc)
        inputs: list[dict[str, Any]] | None = None
        try:
            body = await self.read_body(http, p.ChatCompletionRequest)
            messages = body.openai_messages()
            inputs = digest_inputs(messages)
            if body.model not in (self.served_name, self.info.id):
                raise ApiError(404, f"model '{body.model}' is not served here", f"use '{self.served_name}' (see /v1/models)",
                               code="model_not_found", param="model")
            if body.logprobs:  # an OpenAI field medgem cannot fill: refused, not silently null
                raise ApiError(400, "logprobs are not available from medgem", "drop logprobs",
                               code="unsupported_parameter", param="logprobs")
            self.check_budget(body.budget())
        except MedgemError as exc:
            return await self.reject(user, endpoint, exc, inputs)
        # From here the client may leave while its inputs are read (seconds for a big upload):
        # the watcher sets ``gone``, checked before and after reading and again before prefill.
        async with watch_client(http) as gone:
            try:
                request = await asyncio.to_thread(self._chat_request, body, messages, gone)
            except MedgemError as exc:
                return await self.reject(user, endpoint, exc, inputs)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self.run(http, request, user=user, endpoint=endpoint, inputs=inputs, messages=messages,
                                  stream=body.stream, include_usage=include_usage, cancel=gone)

    def _chat_request(self, body: p.ChatCompletionRequest, messages: list[dict[str, Any]],
                      gone: threading.Event) -> Request:
        check_present(gone, "before its inputs were read")
        try:
            request = request_from_openai(
                messages, variant=self.model.variant, chat=self.model.chat_model,
                options=body.generation_options(),
                allowed_dirs=list(self.config.allowed_dirs), max_images=self.config.max_images,
                imaging=replace(self.config.imaging, cancelled=gone.is_set),  # a client that leaves stops it
            )
        except InputCancelled:
            check_present(gone, "while its inputs were read")  # a 499, audited as the client leaving
            raise
        check_present(gone, "while its inputs were read")
        return request

    async def run(
        self, http: HttpRequest, request: Request, *, user: str, endpoint: str,
        inputs: list[dict[str, Any]], messages: list[dict[str, Any]], stream: bool,
        include_usage: bool, cancel: threading.Event | None = None,
    ) -> Response:
        """Queue a built request and answer as a stream or as one JSON body.

        Args:
            cancel: set when the client left (a watcher's); the job stops at its next check.
        """
        record_id = f"chatcmpl-{uuid.uuid4().hex}"
        cancel = cancel if cancel is not None else threading.Event()
        try:
            if not cancel.is_set() and await http.is_disconnected():
                cancel.set()
            check_present(cancel, "while its inputs were read")  # the engine is never reached
            job = self.queue.submit(request, self.finalize, cancel=cancel, record_id=record_id, user=user,
                                    endpoint=endpoint, inputs=inputs,
                                    messages=messages if self.config.log_prompts else [])
        except MedgemError as exc:
            return await self.reject(user, endpoint, exc, inputs)
        reader = JobReader(job, http)
        try:
            first = await reader.next()
        except ClientGone:
            await reader.close()
            return Response(status_code=499)
        if isinstance(first, Failed):
            await reader.close()
            self.metrics.count_request(endpoint, error_body(first.error)[0])
            return error_response(first.error)
        self.metrics.count_request(endpoint, 200)
        assert isinstance(first, Started)
        created = int(time.time())
        if stream:
            return StreamingResponse(
                self._sse(reader, record_id, created, include_usage), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._whole(reader, record_id, created)

    async def _whole(self, reader: JobReader, record_id: str, created: int) -> Response:
        try:
            while True:
                item = await reader.next()
                if isinstance(item, Completed):
                    answer = item.answer
                    completion = p.ChatCompletion(
                        id=record_id, created=created, model=self.served_name,
                        choices=[p.Choice(message=p.AssistantMessage(content=answer.text, reasoning_content=answer.thinking or None,
                                                                 reasoning=answer.thinking or None),
                                          finish_reason=_finish(answer))],
                        usage=_usage(answer), medgem=self._extra(item, reader.job),
                    )
                    return JSONResponse(completion.model_dump())
                if isinstance(item, Failed):
                    return error_response(item.error)
        except ClientGone:
            return Response(status_code=499)
        finally:
            await reader.close()

    async def _sse(self, reader: JobReader, record_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: p.Delta, **extra: Any) -> str:
            body = p.ChatCompletionChunk(id=record_id, created=created, model=self.served_name,
                                         choices=[p.ChunkChoice(delta=delta, finish_reason=extra.pop("finish_reason", None))], **extra)
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        try:
            yield chunk(p.Delta(role="assistant", content=""))
            while True:
                item = await reader.next()
                if isinstance(item, ThinkingChunk):
                    yield chunk(p.Delta(reasoning_content=item.text, reasoning=item.text))
                elif isinstance(item, AnswerChunk):
                    yield chunk(p.Delta(content=item.text))
                elif isinstance(item, Completed):
                    yield chunk(p.Delta(), finish_reason=_finish(item.answer), medgem=self._extra(item, reader.job))
                    if include_usage:
                        usage = p.ChatCompletionChunk(id=record_id, created=created, model=self.served_name,
                                                      choices=[], usage=_usage(item.answer))
                        yield f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(item, Failed):
                    yield f"data: {json.dumps(error_body(item.error)[1])}\n\n"
                    return
        except ClientGone:
            return
        finally:
            await reader.close()

    def _extra(self, item: Completed, job: Job) -> p.MedgemExtra:
        answer = item.answer
        return p.MedgemExtra(caveat=answer.caveat, label=answer.label, audit_id=item.record_id,
                             queue_s=round(job.queue_s, 4), first_token_s=round(answer.timings.first_token_s, 4),
                             total_s=round(answer.timings.total_s, 4),
                             adapter=answer.model.adapter, adapter_sha256=answer.model.adapter_sha256)

    # --- models ------------------------------------------------------------------------------

    def model_card(self) -> p.ModelCard:
        from medgem.answer import label_for

        caps = self.model.engine.capabilities
        return p.ModelCard(
            id=self.served_name, created=self.created, max_model_len=self.info.context_length,
            medgem=model_fields(self.info) | {
                "label": label_for(self.info), "caveat": self.model.caveat,
                "images": caps.images, "thinking": self.model.can_think,
                "medgemma": self.model.variant is not None,
            },
        )


@contextlib.asynccontextmanager
async def watch_client(http: HttpRequest) -> AsyncIterator[threading.Event]:
    """An event set once the client disconnects, watched while the block runs.

    Start it only after the body was read: the watcher's polls would swallow body messages.
    """
    gone = threading.Event()

    async def watch() -> None:
        while not gone.is_set():
            if await http.is_disconnected():
                gone.set()
                return
            await asyncio.sleep(_POLL_S)

    task = asyncio.ensure_future(watch())
    try:
        yield gone
    finally:
        task.cancel()


def check_present(gone: threading.Event, when: str) -> None:
    """Raises ClientDisconnectedError once the client left ("... disconnected {when}")."""
    if gone.is_set():
        raise ClientDisconnectedError(f"the client disconnected {when}", "nothing ran on the model")


class JobReader:
    """Reads a job's items on the event loop, noticing a client that went away."""

    def __init__(self, job: Job, http: HttpRequest) -> None:
        self.job = job
        self.http = http
        self._getter: asyncio.Future[JobItem] | None = None

    async def next(self) -> JobItem:
        """The next item; raises ClientGone (and cancels the job) when the client left."""
        while True:
            if self._getter is None:
                self._getter = asyncio.ensure_future(self.job.out.get())
            done, _ = await asyncio.wait({self._getter}, timeout=_POLL_S)
            if done:
                item = self._getter.result()
                self._getter = None
                return item
            if await self.http.is_disconnected():
                self.job.cancel.set()
                raise ClientGone()

    async def close(self) -> None:
        """Stop the job if it still runs (a no-op after it finished)."""
        self.job.cancel.set()
        if self._getter is not None:
            self._getter.cancel()
            self._getter = None


def _finish(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Answer) -> p.UsageBody:
    return p.UsageBody(prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                       total_tokens=answer.usage.total_tokens)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over the {limit // (1024 * 1024)} MiB limit",
                    "send smaller or fewer images", code="request_too_large")


__all__ = ["ClientGone", "JobReader", "Serving"]


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
