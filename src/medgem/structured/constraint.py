"""A constrained answer: which JSON the model must write, checked once where it is built.

A ``Constraint`` is built at the edge (CLI flag, HTTP body, Python API keyword) from a JSON
schema, a pydantic model class or "any JSON object", carried on ``GenerationOptions`` and turned
by each engine into its own grammar. ``check`` / ``result`` validate a finished answer, on every
engine, so a reply that does not hold (cut off by the budget, a remote server that ignored the
format) is never handed back as data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from medgem.errors import SchemaError, StructuredOutputError

if TYPE_CHECKING:
    import jsonschema_rs

Kind = Literal["json_object", "json_schema"]

#: Keywords no engine here constrains decoding to, with the name the refusal gives (the keyword
#: itself, but "if/then/else" for those three).
UNSUPPORTED: dict[str, str] = {key: key for key in (
    "patternProperties", "not", "if", "then", "else", "dependentSchemas", "dependentRequired",
    "dependencies", "multipleOf", "contains", "minContains", "maxContains", "propertyNames",
    "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef", "minProperties",
    "maxProperties",
)} | {"if": "if/then/else", "then": "if/then/else", "else": "if/then/else"}
#: String formats every engine's grammar knows.
FORMATS = frozenset({"date", "time", "date-time", "uuid"})
#: Keywords whose value is one subschema / a list of them / a name -> subschema map.
_ONE = ("items", "additionalProperties", "additionalItems")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: How to give a cut-off answer more room, on every surface the message may reach.
_MORE_TOKENS = "raise the budget: max_tokens over HTTP, --max-new-tokens in the CLI, max_new_tokens in Python"


@dataclass(frozen=True)
class Checked:
    """A finished answer read against its constraint.

    Attributes:
        value: the parsed JSON (None when invalid).
        error: why the answer is not valid data, in one line; None when it is.
    """

    value: Any = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Constraint:
    """The JSON an answer must be: built once at the edge, read by every engine.

    Build it with ``from_schema``, ``json_object`` or ``from_model``; the schema is stored as
    compact JSON so the constraint is immutable and hashable (``schema`` gives a fresh dict).
    Key order is kept: the model writes an object's properties in the order the schema lists
    them.

    Attributes:
        kind: "json_object" (any JSON object) or "json_schema".
        schema_json: the schema as compact JSON, key order kept.
        name: a name for the schema (OpenAI's ``json_schema.name``).
        strict: OpenAI's ``strict``; medgem always constrains, and always validates.
    """

    kind: Kind
    schema_json: str
    name: str = "response"
    strict: bool = True

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON schema (a fresh copy)."""
        value: dict[str, Any] = json.loads(self.schema_json)
        return value

    @functools.cached_property
    def decoding_schema_json(self) -> str:
        """The schema the engines decode to. With ``strict``, an object schema that lists its
        properties and does not say ``additionalProperties`` takes only those, as llama.cpp's
        and xgrammar's converters read it and as OpenAI's strict mode requires: left open, a
        model may add keys of its own until its budget runs out (the demo model did). Say
        ``"additionalProperties": true`` to allow others. Answers are validated against
        ``schema_json`` as given."""
        if self.kind != "json_schema" or not self.strict:
            return self.schema_json
        return json.dumps(_closed(json.loads(self.schema_json)), ensure_ascii=False,
                          separators=(",", ":"))

    @property
    def digest(self) -> str:
        """sha256 of the compact schema: names the constraint in logs and reports."""
        return hashlib.sha256(self.schema_json.encode()).hexdigest()

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | bool, *, name: str | None = None,
                    strict: bool = True) -> Constraint:
        """A constraint for a JSON schema, checked now.

        Args:
            schema: a JSON schema (draft 2020-12 or earlier) as a mapping.
            name: the schema's name (default: its ``title``, else "response").
            strict: OpenAI's strict flag, carried on to remote servers.

        Raises:
            SchemaError: not a valid JSON schema, or it uses a feature no engine constrains to.
        """
        if not isinstance(schema, Mapping):
            raise SchemaError("a JSON schema must be a JSON object",
                              'give an object such as {"type": "object", "properties": {...}}')
        try:
            text = json.dumps(schema, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"the JSON schema is not plain JSON ({exc})") from exc
        plain: dict[str, Any] = json.loads(text)
        check_schema(plain)
        title = plain.get("title")
        default = re.sub(r"[^A-Za-z0-9_-]+", "_", title)[:64] if isinstance(title, str) and title else "response"
        chosen = name or default
        if not _NAME.match(chosen):
            raise SchemaError(f"schema name {chosen!r} is not allowed",
                              "use 1-64 letters, digits, '_' or '-'")
        constraint = cls("json_schema", text, chosen, strict)
        constraint.validator()  # compiles once here, so a broken $ref fails at the edge
        return constraint

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls("json_object", json.dumps({"type": "object"}), "json_object", False)

    @classmethod
    def from_model(cls, model: type[Any], *, name: str | None = None,
                   strict: bool = True) -> Constraint:
        """A constraint from a pydantic model class (its ``model_json_schema()``).

        Raises:
            SchemaError: the class is not a pydantic model, pydantic cannot write its JSON
                schema, or the schema is unsupported.
        """
        make = getattr(model, "model_json_schema", None)
        if not isinstance(model, type) or make is None:
            raise SchemaError(f"{model!r} is not a pydantic model class",
                              "pass a pydantic BaseModel subclass, a JSON schema dict or a Constraint")
        try:
            schema = make()
        except Exception as exc:  # pydantic's PydanticUserError family, NameError subclasses
            # A field JSON Schema cannot express (a Callable), or a class not fully defined.
            raise SchemaError(f"the pydantic model {model.__name__} has no JSON schema: "
                              f"{' '.join(str(exc).split('For further information')[0].split())}",
                              "give its fields JSON types (str, int, float, bool, lists, "
                              "nested models), or pass a JSON schema dict") from exc
        return cls.from_schema(schema, name=name or model.__name__, strict=strict)

    def validator(self) -> jsonschema_rs.Validator:
        """The compiled validator (cached per schema)."""
        return _validator(self.schema_json)

    def result(self, text: str, finish_reason: str | None = None) -> Checked:
        """Read a finished answer: the parsed object, or why it is not valid data.

        Args:
            text: the answer (the thought already split off).
            finish_reason: "length" when the budget ended the answer: an answer that does not
                parse then is reported as cut off, and a bare number as possibly cut.

        Returns:
            Checked with the value, or with the error in one line.
        """
        body = text.strip()
        try:
            value = json.loads(body)
        except ValueError as exc:
            if finish_reason == "length":
                return Checked(error=f"the answer hit the token budget before the JSON closed ({_MORE_TOKENS})")
            return Checked(error=f"the answer is not JSON ({exc})")
        if finish_reason == "length" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return Checked(error=f"the answer hit the token budget inside a number ({_MORE_TOKENS})")
        if self.kind == "json_object" and not isinstance(value, dict):
            return Checked(error=f"the answer is JSON but not an object (a {type(value).__name__})")
        problems = [_error_line(e) for e in self.validator().iter_errors(value)]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return Checked(error=f"the answer does not match the schema: {problems[0]}{more}")
        return Checked(value=value)

    def check(self, text: str, finish_reason: str | None = None) -> Any:
        """The parsed answer, validated against the schema.

        Raises:
            StructuredOutputError: the answer is not valid JSON for the schema.
        """
        checked = self.result(text, finish_reason)
        if checked.error is not None:
            raise StructuredOutputError(checked.error)
        return checked.value

    def record(self) -> dict[str, Any]:
        """What the audit trail and reports store about the constraint."""
        return {"kind": self.kind, "name": self.name, "strict": self.strict,
                "sha256": self.digest, "schema": self.schema}

    def response_format(self) -> dict[str, Any]:
        """OpenAI's ``response_format`` for this constraint."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.schema, "strict": self.strict}}


def _closed(node: Any) -> Any:
    """``node`` with ``additionalProperties: false`` on every object schema that lists
    properties and says nothing of others; values that are data (enum, const, default) kept."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _MAP and isinstance(value, dict):
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in _ONE or key in _LIST:
            out[key] = _closed(value)
        else:
            out[key] = value
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def check_schema(schema: Mapping[str, Any]) -> None:
    """Refuse a schema that is not valid JSON Schema or uses a feature no engine constrains to.

    Raises:
        SchemaError: naming the feature and where it is (a JSON pointer).
    """
    import jsonschema_rs

    try:
        jsonschema_rs.meta.validate(dict(schema))
    except jsonschema_rs.ValidationError as exc:
        raise SchemaError(f"not a valid JSON schema: {_error_line(exc)}") from exc
    except jsonschema_rs.ReferencingError as exc:
        raise SchemaError(f"not a valid JSON schema: {' '.join(str(exc).split())}") from exc
    for pointer, node in _subschemas(schema, ""):
        _check_node(node, pointer or "/")


def _check_node(node: Mapping[str, Any], pointer: str) -> None:
    where = f" at {pointer}"
    for key, feature in UNSUPPORTED.items():
        if key in node:
            raise SchemaError(f"the schema uses {feature}{where}, which constrained decoding does not support",
                              "remove it (the answer is still validated against what remains)")
    if node.get("uniqueItems") is True:
        raise SchemaError(f"the schema uses uniqueItems{where}, which constrained decoding does not support",
                          "remove it")
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        raise SchemaError(f"the schema has a $ref to a remote URL{where} ({ref})",
                          "inline the referenced schema under $defs and refer to it as #/$defs/NAME")
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt not in FORMATS:
        raise SchemaError(f"the schema uses format {fmt!r}{where}, which constrained decoding does not support",
                          f"use one of {', '.join(sorted(FORMATS))}, or a pattern")


def _subschemas(node: Any, pointer: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every subschema (object form) with its JSON pointer, the root first."""
    if not isinstance(node, Mapping):
        return
    yield pointer, node
    for key in _ONE:
        if key in node:
            yield from _subschemas(node[key], f"{pointer}/{key}")
    for key in _LIST:
        items = node.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                yield from _subschemas(item, f"{pointer}/{key}/{i}")
    if isinstance(node.get("items"), list):  # draft 4-7 tuple form
        for i, item in enumerate(node["items"]):
            yield from _subschemas(item, f"{pointer}/items/{i}")
    for key in _MAP:
        members = node.get(key)
        if isinstance(members, Mapping):
            for name, item in members.items():
                yield from _subschemas(item, f"{pointer}/{key}/{name}")


def _error_line(exc: Any) -> str:
    path = "/" + "/".join(str(p) for p in getattr(exc, "instance_path", ()) or ())
    message = " ".join(str(getattr(exc, "message", exc)).split())
    return f"{message} at {path}" if path != "/" else message


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema_rs.Validator:
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(json.loads(schema_json))
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise SchemaError(f"the JSON schema cannot be compiled: {' '.join(str(exc).split())}",
                          "check that every $ref points at a definition in the schema") from exc
