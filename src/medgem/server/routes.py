"""Every route of the server, on one router: typed bodies (the models of :mod:`protocol`), the
caller through one dependency, refusals raised to the app's one exception handler
(:meth:`Serving.refuse`), and the OpenAPI document FastAPI builds from all of it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from medgem.audit import add_review
from medgem.errors import ApiError, MedgemError
from medgem.request import Request
from medgem.server import pacs_browse, structured
from medgem.server import pacs_protocol as pp
from medgem.server import protocol as p
from medgem.server.serving import Serving
from medgem.server.uploads import ask_messages, ask_request, preview

_PAGE_HEADERS = {  # SecurityHeaders adds nosniff and no-referrer
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
}
STATIC = resources.files("medgem.server") / "static"
_ERROR_TEXT = {
    400: "The request is invalid (bad JSON, unknown or out-of-range field, bad input file).",
    401: "An API key is required, or it is not valid.",
    403: "The PACS named is not one the operator allowed (nothing was asked of it).",
    404: "No such model or record.",
    413: "The body is over the server's size limit.",
    429: "The engine's line (or the preview pool) is full; retry after Retry-After seconds.",
    502: "The PACS could not be reached, refused medgem's credentials, or answered an error.",
    503: "The server is shutting down, or cannot check API keys right now.",
    504: "The PACS did not answer in time.",
    507: "The machine cannot hold this request.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Whole seconds, estimated from measured service times",
                                "required": True, "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}
# One server-sent event: ``data`` is a chat.completion.chunk as JSON (ChatCompletionChunk), an
# error body, or ``[DONE]`` at the end.
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}}}}}


def _doc(ok: dict[int | str, dict[str, Any]], *errors: int) -> dict[int | str, dict[str, Any]]:
    """The responses an operation documents: its answers, then its refusals (error bodies)."""
    refusals: dict[int | str, dict[str, Any]] = {
        status: {"model": p.ErrorBody, "description": _ERROR_TEXT[status]} | ({"headers": _RETRY_AFTER} if status == 429 else {})
        for status in errors}
    return {**ok, **refusals}


def serving_of(http: HttpRequest) -> Serving:
    return http.app.state.serving  # type: ignore[no-any-return]


ServingDep = Annotated[Serving, Depends(serving_of)]
_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description="needed when the server has API keys")


def caller(http: HttpRequest, serving: ServingDep,
           _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> str:
    """The API key's name ("local" without keys); raises AuthError. Also ``http.state.user``,
    which a refusal's record names."""
    user = serving.authenticate(http.headers)
    http.state.user = user
    return user


def caller_if_any(http: HttpRequest, serving: ServingDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> str | None:
    """:func:`caller`, or None for a caller without a valid key."""
    try:
        return caller(http, serving, credentials)
    except MedgemError:
        return None


User = Annotated[str, Depends(caller)]


class _Previewing(APIRoute):
    """Holds a preview slot from before the body arrives to the answer: previews decode whole
    uploads beside the engine, so a bounded pool (a 429 beyond it) admits them."""

    def get_route_handler(self) -> Callable[[HttpRequest], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def admitted(http: HttpRequest) -> Response:
            with serving_of(http).previews.admit():
                return await handle(http)

        return admitted


router = APIRouter(strict_content_type=False)


@router.post("/v1/chat/completions", summary="OpenAI chat completions: one JSON body, or a stream of chunks with `stream: true`",
             responses=_doc({200: {"model": p.ChatCompletion, "content": dict(_SSE)}}, 400, 401, 404, 413, 429, 503, 507))
async def chat_completions(body: p.ChatCompletionRequest, http: HttpRequest, user: User, serving: ServingDep) -> Response:
    messages = body.openai_messages()
    constraint = functools.cache(lambda: structured.chat_constraint(body.response_format))

    def check() -> None:
        serving.check_model(body.model, "/v1/models")
        if body.logprobs:  # an OpenAI field medgem cannot fill: refused, not silently null
            raise ApiError(400, "logprobs are not available from medgem", "drop logprobs",
                           code="unsupported_parameter", param="logprobs")
        serving.check_budget(body.budget())
        structured.require_constrained(serving.model, constraint(), "response_format")

    fetched: list[Any] = []  # what image_dicom parts fetched: recorded under the answer, held for send-back

    def build(gone: threading.Event) -> Request:
        request = serving.openai_request(messages, body.generation_options(constraint()), gone,
                                         fetched)
        for study in fetched:  # every PACS fetch is an audit event (UIDs hashed)
            serving.store.append("pacs_fetch", {"user": user, "endpoint": "/v1/chat/completions",
                                                **study.audit_fields()})
        return request

    return await serving.answer(http, user=user, messages=messages, check=check, build=build, stream=body.stream,
                                include_usage=bool(body.stream_options and body.stream_options.include_usage),
                                studies=fetched)


@router.post("/api/ask", summary="The web page's question about one upload, streamed as chunks",
             responses=_doc({200: {"content": dict(_SSE)}}, 400, 401, 413, 429, 503, 507))
async def ask(body: p.AskRequest, http: HttpRequest, user: User, serving: ServingDep) -> Response:
    constraint = functools.cache(lambda: structured.ask_constraint(body))

    def check() -> None:
        serving.check_budget(body.max_tokens)
        structured.require_constrained(serving.model, constraint(), "schema")

    return await serving.answer(
        http, user=user, messages=ask_messages(body), check=check,
        build=lambda gone: ask_request(body, serving.model, serving.config, gone.is_set, constraint()),
        stream=True, include_usage=True, names=(body.name,) if body.name else ())


@router.get("/v1/models", summary="The served model, with its label, caveat and capabilities",
            responses=_doc({200: {"model": p.ModelList}}, 401, 503))
async def models(user: User, serving: ServingDep) -> Response:
    return JSONResponse(p.ModelList(data=[serving.model_card()]).model_dump())


async def preview_upload(body: p.PreviewRequest, user: User, serving: ServingDep) -> Response:
    """The preprocessed images (as PNG data URLs) the model will see for an upload."""
    shown = await asyncio.to_thread(preview, body, serving.config)
    serving.metrics.count_request("/api/preview", 200)
    return JSONResponse(shown.model_dump())


router.add_api_route("/api/preview", preview_upload, methods=["POST"], route_class_override=_Previewing,
                     summary="The images the model would see for an upload",
                     responses=_doc({200: {"model": p.Preview}}, 400, 401, 413, 429, 503))


@router.post("/api/reviews", status_code=201, summary="A clinician's verdict on an answer, appended to the audit trail (under --send-back, "
             "an accepted or corrected image_dicom answer is then stored on its PACS as DICOM SR)",
             responses=_doc({201: {"model": p.Record}}, 400, 401, 404, 413, 503))
async def review(body: p.ReviewRequest, user: User, serving: ServingDep) -> Response:
    answer = await asyncio.to_thread(serving.store.get, body.record_id)
    if answer is None or answer.kind != "answer" or not serving.may_read(user, answer):
        raise ApiError(404, f"no answer record '{body.record_id}'", code="record_not_found", param="record_id")
    # With keys, the reviewer is the key: a name typed in the form cannot stand for another.
    reviewer = user if serving.keys is not None else (body.reviewer or user)
    record = await asyncio.to_thread(add_review, serving.store, body.record_id, body.verdict,
                                     correction=body.correction, note=body.note, reviewer=reviewer, user=user)
    reply = record.to_dict()
    if serving.sendbacks is not None:  # --send-back: accepted or corrected answers go to their PACS
        sent = await asyncio.to_thread(serving.sendbacks.after_review, answer, user)
        reply |= {"send_back": sent.model_dump()} if sent is not None else {}
    serving.metrics.count_request("/api/reviews", 201)
    return JSONResponse(reply, status_code=201)


@router.get("/api/records/{record_id}", summary="One audit record with its reviews",
            responses=_doc({200: {"model": p.Record}}, 401, 404, 503))
async def record(record_id: str, user: User, serving: ServingDep) -> Response:
    found = await asyncio.to_thread(serving.store.get, record_id)
    if found is None or not serving.may_read(user, found):  # 404 either way: ids leak nothing
        raise ApiError(404, f"no audit record '{record_id}'", code="record_not_found")
    reviews = await asyncio.to_thread(serving.store.children, record_id)
    return JSONResponse(found.to_dict() | {"reviews": [r.to_dict() for r in reviews]})


@router.get("/api/info", summary="What the page shows first (401 says a key is needed)",
            responses={200: {"model": p.Info}, 401: {"model": p.Info, "description": _ERROR_TEXT[401]}})
async def info(user: Annotated[str | None, Depends(caller_if_any)], serving: ServingDep) -> Response:
    if user is None:  # with keys on, the page learns only that it must ask for one
        return JSONResponse({"auth_required": True}, status_code=401)
    card = serving.model_card()
    return JSONResponse({
        "model": serving.served_name, "label": card.medgem["label"], "caveat": card.medgem["caveat"],
        "images": card.medgem["images"], "thinking": card.medgem["thinking"],
        "engine": serving.info.engine, "revision": serving.info.revision, "auth_required": serving.keys is not None,
        "limits": {"max_body_bytes": serving.config.max_body_bytes, "max_new_tokens": serving.config.max_new_tokens},
    })


@router.get("/api/pacs/sources", summary="The PACS the page may browse (empty: none allowed)",
            responses=_doc({200: {"model": pp.PacsSources}}, 401, 503))
async def pacs_sources(user: User, serving: ServingDep) -> Response:
    return JSONResponse(pacs_browse.list_sources(serving.config).model_dump())


@router.post("/api/pacs/studies", summary="Search an allowed PACS's studies (QIDO-RS / C-FIND), audited",
             responses=_doc({200: {"model": pp.StudyList}}, 400, 401, 403, 413, 502, 503, 504))
async def pacs_studies(body: pp.StudySearch, user: User, serving: ServingDep) -> Response:
    found = await asyncio.to_thread(pacs_browse.find_studies, serving.config, serving.store, user, body)
    return JSONResponse(found.model_dump())


@router.post("/api/pacs/series", summary="List a study's series on an allowed PACS, audited",
             responses=_doc({200: {"model": pp.SeriesList}}, 400, 401, 403, 413, 502, 503, 504))
async def pacs_series(body: pp.SeriesSearch, user: User, serving: ServingDep) -> Response:
    found = await asyncio.to_thread(pacs_browse.find_series, serving.config, serving.store, user, body)
    return JSONResponse(found.model_dump())


@router.get("/healthz", summary="Liveness and the engine queue (503 while warming up or draining)",
            responses={200: {"model": p.Health}, 503: {"model": p.Health, "description": "Warming up or draining."}})
async def healthz(serving: ServingDep) -> Response:
    health = serving.health()
    return JSONResponse(health.model_dump(exclude_none=True), status_code=200 if health.status == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(serving: ServingDep) -> Response:
    return Response(serving.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return FileResponse(str(STATIC / "index.html"), headers=_PAGE_HEADERS)


router.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def not_found(path: str) -> Response:
    """404 for a path no route has; 405 (with Allow) for a real route asked with another method."""
    allowed = sorted({method for route in router.routes if isinstance(route, APIRoute) and route.path != "/{path:path}"
                      and route.path_regex.match("/" + path) for method in route.methods or ()})
    if allowed:
        return JSONResponse({"error": {"message": f"/{path} takes {', '.join(allowed)}", "type": "invalid_request_error",
                                       "param": None, "code": "method_not_allowed"}},
                            status_code=405, headers={"Allow": ", ".join(allowed)})
    return JSONResponse({"error": {"message": f"no route /{path}", "type": "not_found_error",
                                   "param": None, "code": "not_found"}}, status_code=404)
