"""What the routes share: the model behind its queue, the audit store, keys and metrics, the one
handler skeleton that runs a question on the engine, and the one answer to every refusal.

The engine is reached only through :class:`~medgem.api.MedGemma` behind the :class:`EngineQueue`.
OpenAI's shape of the answer is in ``openai_answers``; a client that leaves is noticed by
``client_watch``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from fastapi.exceptions import RequestValidationError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from medgem.answer import Answer, label_for
from medgem.api import MedGemma, imaging_options
from medgem.audit.records import file_name_fields, redacted_error
from medgem.audit.trail import model_fields, unfinished_requests
from medgem.errors import (
    ApiError,
    AuthError,
    ContextLengthError,
    InputError,
    MedgemError,
    error_body,
)
from medgem.request import GenerationOptions, Request
from medgem.request.openai_messages import check_turns, request_from_openai
from medgem.sendback.reviewed import record_sources
from medgem.server import protocol as p
from medgem.server.admission import Slots
from medgem.server.auth import KeyStore, bearer_token
from medgem.server.client_watch import ClientWatch, check_present, read_inputs
from medgem.server.http_errors import (
    BusyError,
    DrainedError,
    as_api_error,
    error_response,
    ollama_error_response,
)
from medgem.server.input_digests import capture_inputs, digest_inputs
from medgem.server.metrics import Metrics
from medgem.server.openai_answers import completion, events
from medgem.server.queue import Completed, EngineQueue, Failed, Job, Started
from medgem.server.send_back import SendBacks
from medgem.server.server_config import ServerConfig

log = logging.getLogger("medgem.server")
AUDITED = frozenset({"/v1/chat/completions", "/api/ask", "/api/chat", "/api/generate"})  # their refusals get a record
COUNTED = AUDITED | {"/api/preview", "/api/reviews"}  # medgem_requests counts their answers
# Ollama's routes (server/ollama.py) refuse in Ollama's shape: {"error": "..."}.
OLLAMA = frozenset({"/api/chat", "/api/generate", "/api/show", "/api/tags", "/api/ps"})
# Gemma 3's longest token is 31 characters (a run of spaces, tabs or newlines): text longer than
# the context times this cannot fit, and is refused before the tokenizer spends minutes on it.
CHARS_PER_TOKEN_MAX = 32


class Replies(Protocol):
    """How an answer is shaped on the wire, for routes that speak another API than OpenAI's
    (Ollama's): a stream, one whole body, a refusal. The skeleton is :meth:`Serving.answer`."""

    def stream(self, job: Job) -> Response: ...

    def whole(self, item: Completed, job: Job) -> Response: ...

    def error(self, exc: BaseException) -> Response: ...


class Serving:
    """Everything a route needs: config, model, its audit store, keys, queue, metrics."""

    def __init__(self, config: ServerConfig, model: MedGemma, keys: KeyStore | None, metrics: Metrics) -> None:
        if model.audit is None:
            raise InputError("the server records every answer, and this model has no audit trail",
                             "load it with one: MedGemma.load(..., audit=PATH or store)")
        self.config = config
        self.model = model
        # The model writes each answer's record (one writer for every surface) to its own
        # store; the server adds who asked, through which endpoint, the inputs as sent.
        self.trail = model.audit
        self.store = model.audit.store
        self.keys = keys
        self.metrics = metrics
        self.info = model.engine.info
        self.served_name = config.model_name or self.info.id
        self.created = int(time.time())
        self.deid_key = config.deid_key or os.urandom(32)
        self.ready = False  # set by warm_up
        # Who accepted a request, in its accept record: a restart marks only its own
        # machine's dead servers' unfinished requests as interrupted.
        self.instance = {"host": socket.gethostname(), "pid": os.getpid(), "instance": uuid.uuid4().hex}
        self.queue = EngineQueue(
            lambda job: model.generate(job.request, job.cancel, audit_context=self._audit_context(job)),
            max_waiting=config.max_queue, min_retry_after=config.retry_after_s,
            workers=model.batcher.parallel,
        )
        self.previews = Slots(config.max_previews, "previews", config.retry_after_s)
        # --send-back: image_dicom answers' studies held until their review (server/send_back.py)
        self.sendbacks = SendBacks(self.store, unreviewed=config.send_back_unreviewed) if config.send_back else None
        metrics.add_gauge("medgem_previews_running", "Previews decoding uploads now.",
                          lambda: float(self.previews.held))
        metrics.add_gauge("medgem_queue_depth", "Requests waiting for the engine.", lambda: self.queue.waiting)
        metrics.add_gauge("medgem_engine_busy", "Requests the engine runs now.", lambda: float(self.queue.running))
        metrics.add_gauge("medgem_batch_size", "Sequences the engine decodes together now.",
                          lambda: float(model.batcher.running))

    # --- start-up ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One tiny request straight through the engine before the server says it serves, so
        the first user does not pay the first call's costs. It is nobody's request: it skips
        the queue, the audit trail and the metrics. A failure is logged, not fatal."""
        started = time.monotonic()
        try:
            request = self.model.request("Hello.", options=GenerationOptions(max_new_tokens=1))
            for _ in self.model.batcher.generate(self.model.engine.prepare(request)):
                pass
            log.info("warmed up in %.1f s", time.monotonic() - started)
        except Exception:
            log.warning("the warm-up request failed; serving anyway", exc_info=True)
        self.ready = True

    def begin_drain(self) -> None:
        """Shutting down (SIGTERM or SIGINT; call on the event loop): no new request is taken,
        and at the drain deadline (shortly before the server stops waiting) the requests
        still queued get a 503 with Retry-After and the running ones are stopped with an
        error (an SSE error event for streams): no client is left with an empty answer."""
        if self.queue.draining:
            return
        self.queue.stop_accepting()
        timeout = self.config.drain_timeout_s
        deadline = max(0.0, timeout - min(5.0, timeout / 4))
        timer = threading.Timer(deadline, self._expire)
        timer.daemon = True
        timer.start()
        log.info("draining: requests still waiting in %.0f s will be refused", deadline)

    def _expire(self) -> None:
        failed, stopped = self.queue.expire(lambda: DrainedError(self.config.retry_after_s))
        if failed or stopped:
            log.warning("drain deadline: %d queued request(s) refused, %d running one(s) stopped", failed, stopped)

    def mark_interrupted(self) -> int:
        """At start-up: append an "interrupted" outcome to every request a server on this
        machine accepted and never finished (it was killed, or its drain timed out). Requests
        of servers still running (another process on the same store) are left alone. Returns
        how many were marked."""
        marked = 0
        for accepted in unfinished_requests(self.store):
            server = accepted.body.get("server") or {}
            if server.get("host") != self.instance["host"] or server.get("instance") == self.instance["instance"]:
                continue
            pid = server.get("pid")
            if pid != os.getpid() and _process_alive(pid):
                continue
            request_id = accepted.body.get("request_id")
            body = {key: accepted.body.get(key) for key in ("user", "endpoint", "request_id", "server")} | {
                "status": None, "error": {"message": "the server stopped before this request ended",
                                          "type": "server_error", "param": None, "code": "interrupted"}}
            free = isinstance(request_id, str) and self.store.get(request_id) is None
            self.store.append("interrupted", body, record_id=request_id if free else None, parent=accepted.id)
            marked += 1
        if marked:
            log.warning("%d accepted request(s) never ended (the server stopped): recorded as interrupted", marked)
        return marked

    def _accept(self, job: Job) -> str:
        """The request's accept record (durable on return): who asked, through which endpoint,
        the inputs' digests, the settings; its outcome will name it as parent."""
        context = self._audit_context(job, prompt=False)
        body = self.trail.request_fields(job.request, self.info, context) | {
            "request_id": job.context["record_id"], "server": self.instance}
        return self.store.append("accepted", body).id

    # --- who asks ----------------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The API key's name, or "local" when the server runs without keys."""
        if self.keys is None:
            return "local"
        token = bearer_token(headers.get("authorization")) or headers.get("x-api-key")
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

    def check_model(self, name: str | None, listing: str, *, suffix: str = "") -> None:
        """Refuses (404) a ``model`` this server does not serve (its name or the model's id, and
        ``suffix``, Ollama's ":latest", may follow); ``listing`` is the route that lists it."""
        served = (self.served_name, self.info.id)
        if name not in served and (name or "").removesuffix(suffix) not in served:
            raise ApiError(404, f"model '{name}' is not served here",
                           f"use '{self.served_name}' (see {listing})", code="model_not_found",
                           param="model")

    def check_budget(self, budget: int | None, param: str = "max_tokens") -> None:
        """Refuses (400) a token budget over the server's limit; ``param`` is the field that set it."""
        if budget is not None and budget > self.config.max_new_tokens:
            raise ApiError(400, f"{param} {budget} is over this server's limit of {self.config.max_new_tokens}",
                           "ask for fewer tokens", code="invalid_value", param=param)

    def check_text_fits(self, inputs: list[dict[str, Any]]) -> None:
        """Refuses (400) text that no tokenization could fit in the model's context, counted
        from the inputs' digests, so a 50 MB question does not hold the engine while it is
        tokenized (2 minutes on 2 cores) only to be refused."""
        chars = sum(entry.get("chars", 0) for entry in inputs if entry["kind"] == "text")
        limit = self.info.context_length
        if chars > limit * CHARS_PER_TOKEN_MAX:
            raise ContextLengthError(
                f"the messages hold {chars:,} characters of text, more than the model's context of "
                f"{limit} tokens can hold", "shorten the question")

    def openai_request(self, messages: list[dict[str, Any]], options: GenerationOptions,
                       gone: threading.Event, fetched: list[Any] | None = None) -> Request:
        """The Request for OpenAI-shaped messages, read within this server's limits (files,
        images, PACS); ``gone`` stops the reading, ``fetched`` receives what PACS parts fetched."""
        return request_from_openai(
            messages, variant=self.model.variant, chat=self.model.chat_model, options=options,
            allowed_dirs=list(self.config.allowed_dirs), max_images=self.config.max_images,
            imaging=imaging_options(self.config.imaging, cancelled=gone.is_set),
            allowed_pacs=self.config.allowed_pacs, fetched=fetched)

    # --- every refusal -----------------------------------------------------------------------

    async def refuse(self, http: HttpRequest, exc: Exception) -> Response:
        """The one exception handler: the error as an OpenAI-style body (Retry-After on 429s),
        counted, and recorded as "rejected" for the generating endpoints. A body refused before
        the auth dependency ran (validation, size, a full preview pool) is checked for a key
        first, so a caller without one learns only that."""
        error = as_api_error(exc, http.headers.get("content-type"))
        route = http.scope.get("route")
        endpoint = str(getattr(route, "path", http.url.path))
        user: str | None = getattr(http.state, "user", None)
        if user is None and isinstance(exc, (RequestValidationError, HTTPException, BusyError)):
            try:
                user = self.authenticate(http.headers)
            except MedgemError as auth:
                error = auth
        if user is not None and endpoint in AUDITED and isinstance(error, MedgemError):
            status, body = error_body(error)
            names = getattr(http.state, "names", ())
            record = {"user": user, "endpoint": endpoint, "status": status,
                      "error": redacted_error(body["error"], names),
                      "inputs": getattr(http.state, "inputs", None) or []}
            try:
                await asyncio.to_thread(self.store.append, "rejected", record)
            except Exception:
                log.exception("could not audit a rejected request")
        if endpoint in COUNTED:
            self.metrics.count_request(endpoint, error_body(error)[0])
        return ollama_error_response(error) if endpoint in OLLAMA else error_response(error)

    # --- the handler skeleton ----------------------------------------------------------------

    async def answer(
        self, http: HttpRequest, *, user: str, messages: list[dict[str, Any]], check: Callable[[], None],
        build: Callable[[threading.Event], Request], stream: bool, include_usage: bool,
        replies: Replies | None = None, names: tuple[str, ...] = (), studies: list[Any] | None = None,
    ) -> Response:
        """Run one question on the engine, as every generating route does: the route's
        dependency authenticated and FastAPI read the body; here the inputs are digested (a
        refusal's record names them), ``check`` refuses what the body alone decides, a watcher
        notices a client that leaves, ``build`` reads the inputs in a thread, and the queue
        runs it. Refusals raise to :meth:`refuse`.

        Args:
            build: makes the Request; the event is set once the client left (stop reading).
            replies: the answer's shape when it is not OpenAI's (Ollama's routes).
            names: the file names the client gave its uploads: records keep their hashes and
                extensions, and errors are recorded without them (the client's own answer
                still names them).
            studies: the list ``build`` fills with what its ``image_dicom`` parts fetched
                (``FetchedStudy``): recorded under the answer, held for send-back.
        """
        refused = replies.error if replies is not None else error_response
        http.state.names = names
        http.state.inputs = inputs = digest_inputs(messages)
        images = [entry for entry in inputs if entry["kind"] in ("image", "image_ref")]
        for entry, name in zip(images, names, strict=False):
            entry.update(file_name_fields(name))
        check()
        check_turns(messages)  # before any image is read: a refusal fetches nothing
        self.check_text_fits(inputs)
        async with ClientWatch(http) as watch:
            request = await asyncio.to_thread(read_inputs, build, watch.gone)
            record_id = f"chatcmpl-{uuid.uuid4().hex}"
            endpoint = str(http.scope["route"].path)
            check_present(watch.gone, "while its inputs were read")  # the engine is never reached
            job = self.queue.submit(request, self.finalize, cancel=watch.gone,
                                    record_id=record_id, user=user, endpoint=endpoint, inputs=inputs, names=names,
                                    messages=messages if self.config.log_prompts else [], studies=studies or [])
            try:  # no worker runs the job before its accept record is durable
                job.context["accepted"] = await asyncio.to_thread(self._accept, job)
            except BaseException:
                job.cancel.set()
                raise
            finally:
                job.accepted.set()
            first = await watch.next(job)
            if first is None:
                return Response(status_code=499)
            if isinstance(first, Failed):  # recorded by the model or by finalize
                self.metrics.count_request(endpoint, error_body(first.error)[0])
                return refused(first.error)
            assert isinstance(first, Started)
            self.metrics.count_request(endpoint, 200)
            created = int(time.time())
            if stream and replies is not None:
                return replies.stream(job)
            if stream:  # sse-starlette frames the events and stops the job when the client leaves
                return EventSourceResponse(
                    events(self, job, record_id, created, include_usage), sep="\n",
                    headers={"Cache-Control": "no-cache"}, shutdown_grace_period=self.config.drain_timeout_s)
            while True:
                item = await watch.next(job)
                if item is None:
                    return Response(status_code=499)
                if isinstance(item, Failed):
                    return refused(item.error)
                if isinstance(item, Completed) and replies is not None:
                    return replies.whole(item, job)
                if isinstance(item, Completed):
                    await self.send_unreviewed(item, job)
                    return JSONResponse(completion(self, item, job, record_id, created).model_dump())

    def _audit_context(self, job: Job, *, prompt: bool = True) -> dict[str, Any]:
        """What the server adds to the request's records; the prompt (--log-prompts) only to
        the record the model writes."""
        ctx = job.context
        context: dict[str, Any] = {
            "record_id": ctx["record_id"], "user": ctx["user"], "endpoint": ctx["endpoint"],
            "inputs": ctx["inputs"], "served_as": self.served_name, "queue_s": job.queue_s,
            "file_names": ctx["names"], "accepted": ctx.get("accepted"),
        }
        if prompt and self.config.log_prompts:
            context["prompt"] = capture_inputs(self.store, ctx["messages"], self.deid_key)
        return context

    def finalize(self, job: Job, answer: Answer | None, error: BaseException | None) -> str | None:
        """After the model wrote the record of an answer or of a failure inside generation
        (worker thread, before the last byte goes out): metrics, and the record of a failure
        outside it (a client gone while waiting)."""
        if answer is not None:
            studies = job.context.get("studies") or []
            if studies and answer.audit_id is not None:  # the link a later send-back follows
                record_sources(self.store, answer.audit_id, studies)
                if self.sendbacks is not None:
                    self.sendbacks.hold(answer.audit_id, studies)
            self.metrics.record_answer(answer, job.queue_s)
            return answer.audit_id
        recorded = getattr(error, "audit_id", None)
        if recorded is not None:
            return str(recorded)
        # the same record as a failure inside generation, without the prompt
        return self.trail.failure(job.request, error or RuntimeError(), self.info,
                                  self._audit_context(job, prompt=False))

    # --- answers -----------------------------------------------------------------------------

    async def send_unreviewed(self, item: Completed, job: Job) -> None:
        """Under --send-back-unreviewed, an answer about a PACS study goes back at once (off
        the engine's thread: the PACS may be slow), before its last chunk, which says how it
        went; an answer cut short by a client that left is not sent."""
        if (self.sendbacks is None or not self.sendbacks.unreviewed or not job.context.get("studies")
                or item.record_id is None or item.answer.finish_reason == "cancelled"):
            return
        job.context["send_back"] = await asyncio.to_thread(
            self.sendbacks.send_unreviewed, item.record_id, job.context["user"])

    # --- what the server is ------------------------------------------------------------------

    def model_card(self) -> p.ModelCard:
        caps = self.model.engine.capabilities
        return p.ModelCard(
            id=self.served_name, created=self.created, max_model_len=self.info.context_length,
            medgem=model_fields(self.info) | {
                "label": label_for(self.info), "caveat": self.model.caveat,
                "images": caps.images, "thinking": self.model.can_think,
                "constrained": caps.constrained,  # response_format json_object / json_schema works
                "medgemma": self.model.variant is not None,
            },
        )

    def health(self) -> p.Health:
        queue = self.queue
        status: Literal["ok", "warming", "draining"] = "draining" if queue.draining else "ok" if self.ready else "warming"
        backends = self.model.engine.health().get("backends")  # a remote front's servers
        return p.Health(status=status, model=self.served_name, waiting=queue.waiting, busy=queue.running > 0,
                        running=queue.running, backends=list(backends) if isinstance(backends, list) else None)


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
