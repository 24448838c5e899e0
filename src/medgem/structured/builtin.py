"""Schemas for MedGemma's own structured tasks, in the shapes its official prompts ask for.

``BOXES`` is the localization answer (``[{"box_2d": [y0, x0, y1, x1], "label": ...}]``, 0-1000 of
the image padded to a square, see ``medgem.answer.boxes``); ``LAB_VALUES`` the lab report ->
JSON list of the lab-extraction task; ``CXR_FINDINGS`` a chest X-ray findings list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medgem.errors import SchemaError
from medgem.structured.constraint import Constraint

_COORDINATE = {"type": "integer", "minimum": 0, "maximum": 1000}
_TEXT = {"type": "string"}


def _list_of(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON list of objects holding only these keys, ``required`` among them."""
    return {"type": "array", "items": {"type": "object", "properties": properties,
                                       "required": required, "additionalProperties": False}}


BOXES = Constraint.from_schema({
    "title": "boxes",
    "description": "Labelled boxes, [y0, x0, y1, x1] normalised to 0-1000 of the padded square.",
    **_list_of({"box_2d": {"type": "array", "items": _COORDINATE, "minItems": 4, "maxItems": 4},
                "label": _TEXT}, ["box_2d", "label"]),
})

LAB_VALUES = Constraint.from_schema({
    "title": "lab_values",
    "description": "Every lab value of a report; keys the report does not give are left out.",
    **_list_of({"name": _TEXT, "value": {"type": ["number", "string"]}, "unit": _TEXT,
                "reference_range": _TEXT, "flag": _TEXT, "specimen": _TEXT,
                "collection_time": _TEXT}, ["name", "value"]),
})

CXR_FINDINGS = Constraint.from_schema({
    "title": "cxr_findings",
    "description": "The findings a chest X-ray shows, each with where and how certain.",
    "type": "object",
    "properties": {
        "findings": _list_of({"finding": _TEXT, "location": _TEXT,
                              "certainty": {"enum": ["definite", "probable", "possible"]}},
                             ["finding", "certainty"]),
        "impression": _TEXT,
    },
    "required": ["findings"],
    "additionalProperties": False,
})

#: Built-in schemas by the name the CLI (``--json-schema NAME``) and ``schema=`` take.
BUILTINS: dict[str, Constraint] = {"boxes": BOXES, "lab-values": LAB_VALUES, "cxr-findings": CXR_FINDINGS}


def as_constraint(value: Constraint | Mapping[str, Any] | type[Any] | str | None) -> Constraint | None:
    """What the Python API's ``schema=`` (and the CLI's ``--json-schema NAME``) takes: a
    Constraint, a schema dict, a pydantic model class, "json" (any JSON object), a built-in
    name ("boxes", "lab-values", "cxr-findings"), or None.

    Raises:
        SchemaError: anything else, or an unsupported schema.
    """
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, str):
        if value == "json":
            return Constraint.json_object()
        if value in BUILTINS:
            return BUILTINS[value]
        raise SchemaError(f"unknown schema name {value!r}",
                          f"use 'json' or one of: {', '.join(sorted(BUILTINS))}, or pass a schema")
    if isinstance(value, Mapping):
        return Constraint.from_schema(value)
    if isinstance(value, type):
        return Constraint.from_model(value)
    raise SchemaError(f"schema= takes a dict, a pydantic model class, a Constraint or 'json', "
                      f"not {type(value).__name__}")
