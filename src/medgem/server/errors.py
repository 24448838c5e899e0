"""HTTP-side errors and their OpenAI-style bodies: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.responses import JSONResponse

from medgem.errors import ApiError, QueueFullError, error_body

log = logging.getLogger("medgem.server")


class BusyError(ApiError):
    """A 429 with a Retry-After: a bounded pool (such as the previews') is full."""

    def __init__(self, message: str, retry_after: int, *, code: str) -> None:
        super().__init__(429, message, f"retry after {retry_after} s", code=code)
        self.retry_after = retry_after


def validation_error(exc: ValidationError) -> ApiError:
    """The first pydantic problem, named by its JSON path."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    where = f"'{param}': " if param else ""
    return ApiError(400, f"{where}{message}", "check the request against the API", code="invalid_value", param=param)


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    headers = {}
    if isinstance(exc, (QueueFullError, BusyError)):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=status, headers=headers)
