"""The errors medgem raises on purpose.

Every error carries a message saying what happened and a hint saying what to do next. The CLI
prints ``str(error)`` on one line; the server maps ``status`` and ``code`` to an OpenAI-style body.
"""

from __future__ import annotations


class MedgemError(Exception):
    """Base class: a failure the user can act on.

    Args:
        message: what happened.
        hint: what to do about it (appended after " — ").
    """

    status: int = 400
    code: str = "invalid_request_error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message.rstrip(".")
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} — {self.hint}"
        return " ".join(text.split())


class InputError(MedgemError):
    """The request itself is wrong: empty question, unreadable image, bad parameter."""


class ImageInputError(InputError):
    """An image, DICOM file or series could not be read or prepared."""


class UnsupportedInputError(InputError):
    """The input is valid but this model or engine cannot take it (an image to a text model)."""


class ContextLengthError(InputError):
    """The prompt does not fit the model's context window."""

    code = "context_length_exceeded"


class ModelNotFoundError(MedgemError):
    """No checkpoint at the given path, or not in the local cache and no download allowed."""

    status = 404
    code = "model_not_found"


class NotACheckpointError(MedgemError):
    """A path exists but does not hold a MedGemma / Gemma 3 checkpoint."""

    code = "invalid_model"


class GatedModelError(MedgemError):
    """The hub refused the download (401/403): the terms were not accepted or no token is set."""

    status = 403
    code = "gated_model"


class ResourceError(MedgemError):
    """The model will not fit in the memory this machine has."""

    status = 507
    code = "insufficient_memory"


class EngineUnavailableError(MedgemError):
    """The engine or an optional dependency is not installed, or does not run on this device."""

    status = 501
    code = "engine_unavailable"


class MissingDependencyError(EngineUnavailableError):
    """An optional package is missing; the hint names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            f"install it with: pip install 'medgem[{extra}]'",
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str, package: str | None = None) -> object:
    """Import an optional dependency, or raise a MissingDependencyError naming the extra.

    Args:
        module: the module to import.
        extra: the medgem extra that installs it.
        purpose: what it is needed for, for the message.
        package: the PyPI name when it differs from the module name.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: when the import fails.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module, extra, purpose) from exc
