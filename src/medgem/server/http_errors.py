"""HTTP-side errors and their OpenAI-style bodies: ``{"error": {message, type, param, code}}``.

:func:`as_api_error` is the one mapping from what can go wrong before or inside a handler
(FastAPI's body validation, the body-size limit, medgem's own errors) to the error answered.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from medgem.errors import (
    ApiError,
    ClientDisconnectedError,
    DrainingError,
    MedgemError,
    QueueFullError,
    error_body,
)

MIB = 1024 * 1024
_ROLES = frozenset({"user", "system", "developer", "assistant"})


class BusyError(ApiError):
    """A 429 with a Retry-After: a bounded pool (such as the previews') is full."""

    def __init__(self, message: str, retry_after: int, *, code: str) -> None:
        super().__init__(429, message, f"retry after {retry_after} s", code=code)
        self.retry_after = retry_after


class DrainedError(DrainingError):
    """A 503 with a Retry-After: the server shut down before this request could run (or end)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the server shut down before this request could be answered",
                         f"retry in {retry_after} s, here once it is back or on another instance")
        self.retry_after = retry_after


class BodyTooLarge(HTTPException):
    """Raised while a body is received past the limit (an HTTPException, so FastAPI's body
    reading lets it through to the exception handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit // MIB} MiB limit")


class BodyTooDeep(HTTPException):
    """Raised while a body is received once its JSON nests past the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(400, f"the body's JSON nests more than {limit} levels deep")


def as_api_error(exc: Exception, content_type: str | None = None) -> Exception:
    """The error to answer with: validation and body problems as 4xx ApiErrors, medgem's
    errors as they are; anything else stays itself (a 500). ``content_type`` is the request's
    header: a body FastAPI did not read as JSON because of it is told so."""
    if isinstance(exc, MedgemError):
        return exc
    if isinstance(exc, RequestValidationError):
        return request_validation_error(exc.errors(), content_type)
    if isinstance(exc, BodyTooLarge):
        return ApiError(413, str(exc.detail), "send smaller or fewer images", code="request_too_large")
    if isinstance(exc, BodyTooDeep):
        return ApiError(400, str(exc.detail), "send a flatter JSON object", code="invalid_json")
    if isinstance(exc, HTTPException) and isinstance(exc.__cause__, ClientDisconnect):
        return ClientDisconnectedError("the client disconnected while sending its body")
    if isinstance(exc, HTTPException) and exc.status_code == 400:  # FastAPI could not decode the body
        return ApiError(400, "the body is not valid JSON (or not UTF-8)", "send a JSON object",
                        code="invalid_json")
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, str(exc.detail))
    return exc


def request_validation_error(errors: Any, content_type: str | None = None) -> ApiError:
    """The first problem of a body, named by its JSON path; a body that was not read as JSON
    because its ``content_type`` is not JSON's (``curl -d`` sends a form's) says so."""
    first = errors[0]
    kind = first.get("type")
    loc = tuple(first.get("loc", ()))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the body is not valid JSON ({detail})", "send a JSON object", code="invalid_json")
    if loc == ("body",) and kind in ("missing", "model_attributes_type", "dict_type", "model_type"):
        sent = (content_type or "").split(";", 1)[0].strip().lower()
        if sent and sent != "application/json" and not sent.endswith("+json"):
            return ApiError(400, f"the body was sent as '{sent}', not as JSON",
                            "send it with the header 'Content-Type: application/json' "
                            "(curl: -H 'content-type: application/json')", code="invalid_json")
        return ApiError(400, "the body must be a JSON object", "send a JSON object", code="invalid_json")
    if kind == "invalid_unicode":  # JSON allows "\ud800"; nothing downstream can encode it
        where = (first.get("ctx") or {}).get("where") or None
        return ApiError(400, f"{where or 'the body'} holds a lone UTF-16 surrogate, which is not text",
                        "send valid Unicode (surrogates only in pairs)", code="invalid_unicode", param=where)
    if len(loc) > 3 and loc[:2] == ("body", "messages") and loc[3] in _ROLES:  # the union's tag
        loc = loc[:3] + loc[4:]
    param = ".".join(str(p) for p in loc[1:] if loc and loc[0] == "body") or None
    message = "unknown field" if kind == "extra_forbidden" else str(first.get("msg", "invalid value"))
    where = f"'{param}': " if param else ""
    return ApiError(400, f"{where}{message}", "check the request against the API", code="invalid_value", param=param)


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status, headers=_retry_after(exc))


def ollama_error_body(exc: BaseException) -> dict[str, Any]:
    """Ollama's error body: one string (what happened — what to do), plus medgem's code."""
    _, body = error_body(exc)
    return {"error": body["error"]["message"], "code": body["error"]["code"]}


def ollama_error_response(exc: BaseException) -> JSONResponse:
    """The same refusal in Ollama's shape: the status and Retry-After of the OpenAI routes."""
    status, _ = error_body(exc)
    return JSONResponse(ollama_error_body(exc), status_code=status, headers=_retry_after(exc))


def _retry_after(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, (QueueFullError, BusyError, DrainedError)):
        return {"Retry-After": str(exc.retry_after)}
    return {}
