"""Structured answers at the HTTP edge: OpenAI's ``response_format``, ``/api/ask``'s
``schema`` / ``format`` and Ollama's ``format`` become one
:class:`~medgem.structured.Constraint` on the request's options, refused with a 400 before
anything runs when the schema is invalid or unsupported or the engine cannot constrain
decoding; a finished answer is read against it for the response.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medgem.errors import ApiError, SchemaError
from medgem.server import protocol as p
from medgem.structured import Constraint
from medgem.structured.builtin import as_constraint

if TYPE_CHECKING:
    from medgem.answer import Answer
    from medgem.api import MedGemma


def chat_constraint(response_format: p.ResponseFormatText | p.ResponseFormatJsonObject
                    | p.ResponseFormatJsonSchema | None) -> Constraint | None:
    """The constraint ``response_format`` asks for: None for absent or ``text``.

    Raises:
        ApiError: 400 ``invalid_schema`` on ``response_format``: the schema is not valid JSON
            Schema, or uses a feature constrained decoding cannot honour (named).
    """
    if response_format is None or isinstance(response_format, p.ResponseFormatText):
        return None
    if isinstance(response_format, p.ResponseFormatJsonObject):
        return Constraint.json_object()
    spec = response_format.json_schema
    with _refused_as("response_format.json_schema.schema"):
        return Constraint.from_schema(spec.schema_, name=spec.name, strict=spec.strict is not False)


def ask_constraint(body: p.AskRequest) -> Constraint | None:
    """The constraint of an ``/api/ask`` body: its ``schema`` (a JSON schema or a built-in
    name), ``format: "json"`` (any JSON object), or None.

    Raises:
        ApiError: 400 for both fields at once, an unknown built-in name, or a bad schema.
    """
    if body.schema_ is not None and body.format is not None:
        raise ApiError(400, "give schema or format, not both",
                       "schema for JSON of a given shape, format \"json\" for any JSON object",
                       code="invalid_value", param="schema")
    if body.format == "json":
        return Constraint.json_object()
    with _refused_as("schema"):
        return as_constraint(body.schema_)


def format_constraint(value: Any) -> Constraint | None:
    """The constraint of Ollama's ``format``: "json" (any JSON object) or a JSON schema (an
    object); None for absent.

    Raises:
        ApiError: 400 on ``format``: another value, or a schema that is invalid or unsupported.
    """
    if value in (None, ""):
        return None
    if value == "json":
        return Constraint.json_object()
    if not isinstance(value, dict):
        raise ApiError(400, f"format must be \"json\" or a JSON schema, not {value!r}",
                       'use format: "json", or a schema such as {"type": "object", ...}',
                       code="invalid_value", param="format")
    with _refused_as("format"):
        return Constraint.from_schema(value)


def require_constrained(model: MedGemma, constraint: Constraint | None, param: str) -> None:
    """Refuse a constrained request the engine cannot honour: never answered unconstrained.

    Raises:
        ApiError: 400 ``unsupported_parameter`` naming the engine.
    """
    if constraint is None or model.engine.capabilities.constrained:
        return
    info = model.engine.info
    raise ApiError(400, f"the {info.engine} engine serving '{info.id}' cannot constrain its answer to JSON",
                   f"drop {param}, or serve the model with an engine that constrains decoding",
                   code="unsupported_parameter", param=param)


def structured_answer(constraint: Constraint | None, answer: Answer) -> p.StructuredAnswer | None:
    """What the response says of a constrained answer, from what the Answer carries (the answer
    stage read it against the constraint): the parsed JSON when it holds, else why not (a reply
    the budget cut is invalid, never data); None for a free answer."""
    if constraint is None:
        return None
    valid = answer.structured_error is None
    return p.StructuredAnswer(kind=constraint.kind, name=constraint.name, sha256=constraint.digest,
                              valid=valid, error=answer.structured_error,
                              parsed=answer.parsed if valid else None)


@contextmanager
def _refused_as(param: str) -> Iterator[None]:
    """A SchemaError as a 400 on ``param`` (the field of the body that holds the schema)."""
    try:
        yield
    except SchemaError as exc:
        raise ApiError(400, exc.message, exc.hint, code=exc.code, param=param) from exc
