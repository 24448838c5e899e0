"""The errors medgem raises on purpose.

Every error carries a message saying what happened and a hint saying what to do next. The CLI
prints ``str(error)`` on one line; the server maps ``status`` and ``code`` to an OpenAI-style body.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any


class MedgemError(Exception):
    """Base class: a failure the user can act on.

    Args:
        message: what happened.
        hint: what to do about it (appended after " — ").
        param: the request field at fault (the server's error body names it), if one is.
    """

    status: int = 400
    code: str = "invalid_request_error"

    def __init_subclass__(cls, status: int | None = None, code: str | None = None) -> None:
        """Subclasses set their HTTP status and error code as class keywords."""
        super().__init_subclass__()
        cls.status = status or cls.status
        cls.code = code or cls.code

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None) -> None:
        self.message = message.rstrip(".")
        self.hint = hint
        self.param = param
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.message} — {self.hint}" if self.hint else self.message
        return " ".join(text.split())


class InputError(MedgemError):
    """The request itself is wrong: empty question, unreadable image, bad parameter."""


class ImageInputError(InputError):
    """An image, DICOM file or series could not be read or prepared."""


class InputCancelled(ImageInputError):
    """Reading an input stopped because its caller cancelled (the client left)."""


class NotAnImageError(ImageInputError):
    """A DICOM object that holds no image to show (a report, a dose grid, a mask)."""


class UnsupportedInputError(InputError):
    """The input is valid but this model or engine cannot take it (an image to a text model)."""


class ContextLengthError(InputError, code="context_length_exceeded"):
    """The prompt does not fit the model's context window."""


class ModelNotFoundError(MedgemError, status=404, code="model_not_found"):
    """No checkpoint at the given path, or not in the local cache and no download allowed."""


class NotACheckpointError(MedgemError, code="invalid_model"):
    """A path exists but does not hold a MedGemma / Gemma 3 checkpoint."""


class GatedModelError(MedgemError, status=403, code="gated_model"):
    """The hub refused the download (401/403): the terms were not accepted or no token is set."""


class ResourceError(MedgemError, status=507, code="insufficient_memory"):
    """The model will not fit in the memory this machine has."""


class EngineUnavailableError(MedgemError, status=501, code="engine_unavailable"):
    """The engine or an optional dependency is not installed, or does not run on this device."""


class BackendUnavailableError(EngineUnavailableError, status=503, code="backend_unavailable"):
    """A remote server did not answer, or stopped mid-answer (retrying may reach another)."""


class MissingDependencyError(EngineUnavailableError):
    """An optional package is missing; the hint names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            f"install it with: pip install 'medgem[{extra}]'",
        )


class QueueFullError(MedgemError, status=429, code="queue_full"):
    """Too many requests are waiting for the engine."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {waiting} requests are waiting for the model",
            f"retry after {retry_after} s",
        )
        self.retry_after = retry_after


class DrainingError(MedgemError, status=503, code="server_shutting_down"):
    """The server is shutting down and takes no new requests."""


class ClientDisconnectedError(MedgemError, status=499, code="client_disconnected"):
    """The client went away before its request ran."""


class ApiError(MedgemError):
    """A refusal raised by the server itself, with its own status, code and parameter."""

    def __init__(self, status: int, message: str, hint: str | None = None, *,
                 code: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message, hint, param=param)
        self.status = status
        self.code = code


class AuthError(ApiError):
    """A missing, unknown or revoked API key (401)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(401, message, hint, code="invalid_api_key")


class SchemaError(InputError, code="invalid_schema"):
    """A JSON schema for a constrained answer is invalid, or uses a feature medgem cannot
    constrain decoding to (the message names it)."""


class StructuredOutputError(MedgemError, status=502, code="invalid_structured_output"):
    """A finished answer is not valid JSON for its schema (cut off by the budget, or malformed)."""


class DatasetError(InputError):
    """The evaluation data is missing, in the wrong format, or a row lacks a field."""


class PacsError(InputError, code="pacs_error"):
    """A study reference that is malformed, unknown to its PACS, not an image, or a PACS that
    is down, slow or refuses medgem (DICOMweb, DIMSE, FHIR alike)."""


class PacsForbiddenError(PacsError, status=403, code="pacs_not_allowed"):
    """A study reference outside the operator's allowlist (``serve --allow-pacs``)."""


class PacsUnavailableError(PacsError, status=502, code="pacs_unavailable"):
    """Browsing a PACS for the page: it could not be reached or answered with an error (the
    server is a gateway here, so its caller gets a 502, not a 400 about its own request)."""


class PacsRefusedError(PacsUnavailableError, code="pacs_refused"):
    """Browsing a PACS: it refused medgem's credentials (its 401/403; a 502 here, so the page
    does not take it for a bad medgem API key)."""


class PacsTimeoutError(PacsUnavailableError, status=504, code="pacs_timeout"):
    """Browsing a PACS: it did not answer within the bounded browse timeout."""


class RemoteError(MedgemError):
    """An OpenAI-compatible server refused a request; status and code are the server's."""

    def __init__(self, status: int, message: str, hint: str | None, code: str | None) -> None:
        super().__init__(message, hint)
        self.status = status if 400 <= status < 600 else 502
        self.code = code or "remote_error"


class AdapterError(InputError):
    """A LoRA adapter is missing, unfinished, changed since training, or for another model."""


class ConversionError(MedgemError, code="conversion_failed"):
    """The converted files failed the check after conversion."""


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI-style error body) for any exception: what the server answers and the
    audit trail records. Unexpected exceptions hide their details (they may hold paths or PHI)."""
    if isinstance(exc, MedgemError):
        status = exc.status
        named = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
        kind = named.get(status, "invalid_request_error" if status < 500 else "server_error")
        detail = {"message": exc.one_line(), "type": kind,
                  "param": getattr(exc, "param", None), "code": exc.code}
    else:
        logging.getLogger("medgem").error("internal error: %s: %s", type(exc).__name__, exc)
        status = 500
        detail = {"message": "internal error — see the log", "type": "server_error", "param": None,
                  "code": "internal_error"}
    return status, {"error": detail}


def require(module: str, extra: str, purpose: str, package: str | None = None) -> object:
    """Import ``module``, or raise a MissingDependencyError naming the medgem ``extra`` that
    installs it, what it is needed for (``purpose``) and its PyPI name (``package``, when not the
    module's)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module, extra, purpose) from exc
