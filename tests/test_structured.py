"""medgem.structured: schemas checked at the edge, finished answers validated."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from medgem.errors import InputError
from medgem.request.request import GenerationOptions
from medgem.structured import Constraint, SchemaError, StructuredOutputError
from medgem.structured.builtin import BOXES, BUILTINS, CXR_FINDINGS, LAB_VALUES, as_constraint

NESTED = {
    "type": "object",
    "properties": {
        "patient": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}},
                    "required": ["age"]},
        "severity": {"enum": ["mild", "moderate", "severe"]},
        "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
    },
    "required": ["patient", "severity"],
}


class Finding(BaseModel):
    name: str
    present: bool
    size_mm: float | None = None


class Study(BaseModel):
    findings: list[Finding]


def test_schema_is_frozen_hashable_and_keeps_property_order() -> None:
    a = Constraint.from_schema({"type": "object", "properties": {"y": {}, "x": {"type": "string"}}})
    b = Constraint.from_schema({"type": "object", "properties": {"y": {}, "x": {"type": "string"}}})
    assert a == b and hash(a) == hash(b) and a.digest == b.digest
    assert list(a.schema["properties"]) == ["y", "x"]  # the order the model writes them in
    schema = a.schema
    schema["type"] = "array"  # a copy: the constraint does not change
    assert a.schema["type"] == "object"
    assert a.kind == "json_schema" and a.name == "response" and a.strict


def test_name_comes_from_title_or_argument() -> None:
    assert Constraint.from_schema({"title": "Lab report", "type": "object"}).name == "Lab_report"
    assert Constraint.from_schema({"type": "object"}, name="x-1").name == "x-1"
    with pytest.raises(SchemaError, match="name"):
        Constraint.from_schema({"type": "object"}, name="has space")


@pytest.mark.parametrize(("schema", "feature"), [
    ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, "patternProperties"),
    ({"$ref": "https://example.org/schema.json"}, "$ref to a remote URL"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not at /properties/a"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if/then/else"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
    ({"type": "string", "format": "email"}, "format 'email'"),
    ({"$defs": {"a": {"type": "object", "minProperties": 1}}, "$ref": "#/$defs/a"}, "minProperties at /$defs/a"),
])
def test_unsupported_feature_is_named(schema: dict, feature: str) -> None:
    with pytest.raises(SchemaError) as info:
        Constraint.from_schema(schema)
    assert feature in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("schema", [
    {"type": "nonsense"},
    {"type": "object", "required": "name"},
    {"$ref": "#/$defs/missing"},
])
def test_invalid_schema_is_refused(schema: dict) -> None:
    with pytest.raises(SchemaError, match="schema"):
        Constraint.from_schema(schema)


def test_not_a_schema_is_refused() -> None:
    with pytest.raises(SchemaError, match="JSON object"):
        Constraint.from_schema([1, 2])  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="plain JSON"):
        Constraint.from_schema({"type": "object", "default": object()})


def test_local_refs_and_recursion_are_accepted() -> None:
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["label"]}}, "$ref": "#/$defs/node"}
    constraint = Constraint.from_schema(tree)
    assert constraint.check('{"label": "a", "children": [{"label": "b", "children": []}]}') == {
        "label": "a", "children": [{"label": "b", "children": []}]}
    assert "label" in constraint.result('{"children": [{}]}').error


def test_check_returns_the_parsed_object_or_the_reason() -> None:
    constraint = Constraint.from_schema(NESTED)
    good = {"patient": {"age": 61}, "severity": "moderate", "scores": [0.5, 2]}
    assert constraint.check(" " + json.dumps(good) + "\n") == good
    bad = constraint.result('{"patient": {"age": -1}, "severity": "moderate"}')
    assert not bad.valid and bad.value is None
    assert "minimum" in bad.error and "/patient/age" in bad.error
    assert constraint.result('{"patient": {"age": 1}, "severity": "grave"}').error == (
        'the answer does not match the schema: "grave" is not one of "mild", "moderate" or "severe" at /severity')
    assert "not JSON" in constraint.result("Here is the JSON: {}").error
    with pytest.raises(StructuredOutputError, match="does not match"):
        constraint.check('{"severity": "mild"}')


def test_budget_cut_is_invalid_never_data() -> None:
    cut = BOXES.result('[{"box_2d": [10, 20, 30', finish_reason="length")
    assert not cut.valid and "token budget" in cut.error
    # A bare number that ends with the budget may have been cut mid-way.
    number = Constraint.from_schema({"type": "integer"})
    assert number.result("12", finish_reason="length").error
    assert number.result("12", finish_reason="stop").value == 12
    # A closed value that validates stays valid even when the budget ended on its last token.
    assert BOXES.result('[{"box_2d": [1, 2, 3, 4], "label": "x"}]', finish_reason="length").valid


def test_json_object_takes_any_object_only() -> None:
    any_object = Constraint.json_object()
    assert any_object.kind == "json_object"
    assert any_object.check('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert "not an object" in any_object.result("[1, 2]").error
    assert any_object.response_format() == {"type": "json_object"}


def test_pydantic_model_class() -> None:
    constraint = Constraint.from_model(Study)
    assert constraint.name == "Study"
    assert constraint.check('{"findings": [{"name": "effusion", "present": true, "size_mm": null}]}')
    assert not constraint.result('{"findings": [{"name": "effusion"}]}').valid
    with pytest.raises(SchemaError, match="pydantic"):
        Constraint.from_model(dict)


class WithCallback(BaseModel):
    on_done: Callable[[], int]


class Unfinished(BaseModel):
    parent: Later  # type: ignore[name-defined]  # noqa: F821 - never defined, on purpose


def test_pydantic_model_without_a_json_schema_is_one_schema_error() -> None:
    # A field JSON Schema cannot express, or a forward reference never defined, made pydantic's
    # own PydanticInvalidForJsonSchema / PydanticUserError escape the API as a traceback.
    with pytest.raises(SchemaError, match="WithCallback has no JSON schema"):
        Constraint.from_model(WithCallback)
    with pytest.raises(SchemaError, match="Unfinished has no JSON schema"):
        as_constraint(Unfinished)


def test_of_takes_every_form_the_api_accepts() -> None:
    assert as_constraint(None) is None
    assert as_constraint(BOXES) is BOXES
    assert as_constraint("json") == Constraint.json_object()
    assert as_constraint("boxes") is BOXES
    assert as_constraint(NESTED) == Constraint.from_schema(NESTED)
    assert as_constraint(Study) == Constraint.from_model(Study)
    with pytest.raises(SchemaError, match="unknown schema name"):
        as_constraint("yaml")
    with pytest.raises(SchemaError, match="not int"):
        as_constraint(3)  # type: ignore[arg-type]


def test_builtins_accept_the_official_shapes() -> None:
    assert set(BUILTINS) == {"boxes", "lab-values", "cxr-findings"}
    assert BOXES.check('[{"box_2d": [120, 80, 940, 510], "label": "right lung"}]')[0]["label"] == "right lung"
    assert "maximum" in BOXES.result('[{"box_2d": [0, 0, 1001, 5], "label": "x"}]').error
    assert not BOXES.result('[{"box_2d": [0, 0, 5], "label": "x"}]').valid  # three numbers
    assert not BOXES.result('[{"box_2d": [0.5, 0, 5, 9], "label": "x"}]').valid  # not integers
    labs = [{"name": "Haemoglobin", "value": 13.2, "unit": "g/dL", "reference_range": "13.0-17.0",
             "flag": "normal", "specimen": "blood", "collection_time": "2026-01-05 08:10"},
            {"name": "CRP", "value": "<0.5"}]
    assert LAB_VALUES.check(json.dumps(labs)) == labs
    assert not LAB_VALUES.result('[{"value": 1}]').valid
    assert CXR_FINDINGS.check('{"findings": [{"finding": "effusion", "certainty": "probable"}]}')
    assert "certain" in CXR_FINDINGS.result('{"findings": [{"finding": "x", "certainty": "sure"}]}').error


def test_record_and_response_format() -> None:
    record = BOXES.record()
    assert record["name"] == "boxes" and record["schema"] == BOXES.schema and len(record["sha256"]) == 64
    fmt = BOXES.response_format()
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "boxes"
    assert fmt["json_schema"]["strict"] is True


def test_generation_options_carry_a_constraint() -> None:
    options = GenerationOptions.of(None, constraint=BOXES, max_new_tokens=20)
    assert options.constraint is BOXES
    assert GenerationOptions().constraint is None
    hash(options)
    with pytest.raises(InputError, match="Constraint"):
        GenerationOptions(constraint={"type": "object"})  # type: ignore[arg-type]


def test_strict_decoding_closes_objects_that_say_nothing_of_other_keys() -> None:
    """strict (the default): an object schema listing properties takes only those when it does
    not say otherwise; what it says is kept, data values are left alone, validation reads the
    schema as given, and strict=False decodes to the schema as given."""
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "open": {"type": "object", "properties": {"c": {"type": "integer"}},
                 "additionalProperties": True},
        "list": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        "const": {"const": {"properties": {"x": 1}}}},
        "$defs": {"item": {"anyOf": [{"type": "object", "properties": {"d": {"type": "null"}}},
                                     {"type": "string"}]}}}
    closed = json.loads(Constraint.from_schema(schema).decoding_schema_json)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["$defs"]["item"]["anyOf"][0]["additionalProperties"] is False
    assert closed["properties"]["const"]["const"] == {"properties": {"x": 1}}
    assert list(closed["properties"]) == ["a", "open", "list", "const"]
    strict = Constraint.from_schema(schema)
    assert strict.result('{"a":{"b":"x","extra":1}}').valid  # validation: the schema as given
    loose = Constraint.from_schema(schema, strict=False)
    assert loose.decoding_schema_json == loose.schema_json
    assert Constraint.json_object().decoding_schema_json == Constraint.json_object().schema_json
