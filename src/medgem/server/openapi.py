"""The OpenAPI 3.1 document served at ``/openapi.json``.

The handlers read raw requests (they size-check bodies before parsing and answer every refusal
with an OpenAI-style error body), so FastAPI cannot infer their shapes. This module states them
from the same pydantic models the handlers validate and answer with, so the document cannot
drift from the code: one table of operations, one set of component schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from medgem.server import protocol as p

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "The request is invalid (bad JSON, unknown or out-of-range field, bad input file).",
    401: "An API key is required, or it is not valid.",
    404: "No such model or record.",
    413: "The body is over the server's size limit.",
    429: "The engine's line (or the preview pool) is full; retry after Retry-After seconds.",
    503: "The server is shutting down, or cannot check API keys right now.",
    507: "The machine cannot hold this request.",
}
# One server-sent event: ``data`` is a chat.completion.chunk as JSON (ChatCompletionChunk), an
# error body, or ``[DONE]`` at the end.
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}}}}}


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    ok: dict[int, dict[str, type[BaseModel] | dict[str, Any]]]  # status -> media type -> body
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    path_params: tuple[str, ...] = field(default=())


OPERATIONS: tuple[Operation, ...] = (
    Operation("/v1/chat/completions", "post",
              "OpenAI chat completions: one JSON body, or a stream of chunks with `stream: true`",
              {200: {"application/json": p.ChatCompletion, **_SSE}}, p.ChatCompletionRequest,
              (400, 401, 404, 413, 429, 503, 507)),
    Operation("/v1/models", "get", "The served model, with its label, caveat and capabilities",
              {200: {"application/json": p.ModelList}}, errors=(401, 503)),
    Operation("/healthz", "get", "Liveness and the engine queue (503 while draining)",
              {200: {"application/json": p.Health}, 503: {"application/json": p.Health}}),
    Operation("/api/ask", "post", "The web page's question about one upload, streamed as chunks",
              {200: dict(_SSE)}, p.AskRequest, (400, 401, 413, 429, 503, 507)),
    Operation("/api/preview", "post", "The images the model would see for an upload",
              {200: {"application/json": p.Preview}}, p.PreviewRequest, (400, 401, 413, 429, 503)),
    Operation("/api/reviews", "post", "A clinician's verdict on an answer, appended to the audit trail",
              {201: {"application/json": p.Record}}, p.ReviewRequest, (400, 401, 404, 413, 503)),
    Operation("/api/records/{record_id}", "get", "One audit record with its reviews",
              {200: {"application/json": p.Record}}, errors=(401, 404, 503),
              path_params=("record_id",)),
    Operation("/api/info", "get", "What the page shows first (401 says a key is needed)",
              {200: {"application/json": p.Info}, 401: {"application/json": p.Info}}),
    Operation("/metrics", "get", "Prometheus metrics",
              {200: {"text/plain": {"schema": {"type": "string"}}}}),
)


def openapi_document(title: str, version: str) -> dict[str, Any]:
    """The whole document: every operation of :data:`OPERATIONS`, their schemas as components."""
    requests = {op.body for op in OPERATIONS if op.body is not None}
    responses = {body for op in OPERATIONS for media in op.ok.values() for body in media.values()
                 if isinstance(body, type)} | {p.ErrorBody}
    keyed = [(model, "validation") for model in sorted(requests, key=lambda m: m.__name__)]
    keyed += [(model, "serialization") for model in sorted(responses, key=lambda m: m.__name__)]
    refs, defs = models_json_schema(keyed, ref_template=_REF)  # type: ignore[arg-type]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"summary": op.summary, "responses": {}}
        if op.path_params:
            operation["parameters"] = [{"name": name, "in": "path", "required": True,
                                        "schema": {"type": "string"}} for name in op.path_params]
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(op.body, "validation")]}}}
        for status, media in op.ok.items():
            content = {kind: {"schema": refs[(body, "serialization")]} if isinstance(body, type) else body
                       for kind, body in media.items()}
            operation["responses"][str(status)] = {"description": "OK" if status < 400 else _ERROR_TEXT.get(status, "Error"),
                                                   "content": content}
        for status in op.errors:
            response: dict[str, Any] = {"description": _ERROR_TEXT[status], "content": {
                "application/json": {"schema": refs[(p.ErrorBody, "serialization")]}}}
            if status == 429:
                response["headers"] = {"Retry-After": {
                    "description": "Whole seconds, estimated from measured service times",
                    "required": True, "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}
            operation["responses"][str(status)] = response
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "medgem's OpenAI-compatible API and its web page's endpoints. "
                                "Every refusal is an OpenAI-style error body."},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "needed when the server has API keys"}},
        },
    }
