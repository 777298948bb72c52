"""Objects closed to unlisted properties where that only narrows the schema."""

from __future__ import annotations

from plait.constrained.closed_objects import close_objects


def test_listed_properties_close_the_object_and_nested_ones():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {}}}},
        "$defs": {"d": {"properties": {"c": {}}}},
        "items": [{"properties": {"e": {}}}],
    }
    out = close_objects(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["$defs"]["d"]["additionalProperties"] is False
    assert out["items"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not changed


def test_open_objects_intersections_and_negations_stay_as_they_are():
    said = {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert close_objects(said) == said
    both = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}], "properties": {}}
    out = close_objects(both)
    assert all("additionalProperties" not in b for b in out["allOf"])
    assert "additionalProperties" not in out
    negated = {"properties": {"a": {}}, "not": {"properties": {"b": {}}, "required": ["b"]}}
    assert close_objects(negated) == negated
