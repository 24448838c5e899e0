"""Schemas the structured-output tests share (engines and server decode to the same shapes)."""

from __future__ import annotations

from typing import Any

# nested objects, an enum, an integer range, a boolean
NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "patient": {"type": "object", "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "sex": {"enum": ["female", "male", "unknown"]}},
            "required": ["age", "sex"], "additionalProperties": False},
        "urgent": {"type": "boolean"},
    },
    "required": ["patient", "urgent"], "additionalProperties": False,
}
