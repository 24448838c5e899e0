"""HTTP-side errors and their OpenAI-style bodies: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from medgem.errors import ApiError, MedgemError, QueueFullError

log = logging.getLogger("medgem.server")


def validation_error(exc: ValidationError) -> ApiError:
    """The first pydantic problem, named by its JSON path."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    where = f"'{param}': " if param else ""
    return ApiError(400, f"{where}{message}", "check the request against the API", code="invalid_value", param=param)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) for any exception; unexpected ones hide their details."""
    if isinstance(exc, MedgemError):
        status = exc.status
        detail = {
            "message": exc.one_line(), "type": error_type(status),
            "param": getattr(exc, "param", None), "code": exc.code,
        }
    else:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        status = 500
        detail = {
            "message": "internal server error — see the server log",
            "type": "server_error", "param": None, "code": "internal_error",
        }
    return status, {"error": detail}


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    headers = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=status, headers=headers)
