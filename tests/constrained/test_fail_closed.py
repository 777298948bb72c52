"""Fail closed: every keyword a backend would not enforce is a compile error naming the keyword
and its schema path; what compiles is enforced exactly (a byte-level vocabulary, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from plait.constrained.backends import make_compiler
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

BYTES = TokenVocabulary([bytes([i]) for i in range(256)] + [None], 256, [256], "bytes")

# (keyword, schema using it, its path in the error)
XGRAMMAR_REFUSED = [
    ("not", {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "#/properties/a"),
    ("if", {"if": {"type": "integer"}, "then": {"minimum": 3}}, "#"),
    ("then", {"type": "integer", "then": {"minimum": 3}}, "#"),
    ("else", {"type": "integer", "else": {"minimum": 3}}, "#"),
    ("contains", {"type": "array", "contains": {"const": 5}}, "#"),
    ("minContains", {"type": "array", "items": {"type": "integer"}, "minContains": 2}, "#"),
    ("maxContains", {"type": "array", "items": {"type": "integer"}, "maxContains": 2}, "#"),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "#"),
    ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}, "#"),
    ("dependentSchemas", {"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}, "#"),
    (
        "dependencies",
        {"$defs": {"x": {"dependencies": {"a": ["b"]}}}, "$ref": "#/$defs/x"},
        "#/$defs/x",
    ),
    ("unevaluatedItems", {"type": "array", "unevaluatedItems": False}, "#"),
    ("allOf", {"allOf": [{"type": "integer"}, {"minimum": 3}]}, "#"),
    ("format", {"type": "string", "format": "idn-email"}, "#"),
    ("multipleOf", {"type": "number", "multipleOf": 0.5}, "#"),
    ("$ref", {"$ref": "https://example.com/schema.json"}, "#"),
    ("maxDigits", {"type": "integer", "maxDigits": 3}, "#"),
    ("$ref", {"$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a", "minimum": 3}, "#"),
    (
        "anyOf",
        {"type": "object", "additionalProperties": False, "anyOf": [{"properties": {"x": {}}}]},
        "#/anyOf/0",
    ),
    (
        "oneOf",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        "#",
    ),
    ("oneOf", {"items": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "#/items"),
]
OUTLINES_REFUSED = [
    ("minimum", {"type": "integer", "minimum": 3}, "#"),
    (
        "maximum",
        {"type": "object", "properties": {"n": {"type": "number", "maximum": 3}}},
        "#/properties/n",
    ),
    ("exclusiveMinimum", {"type": "integer", "exclusiveMinimum": 3}, "#"),
    ("multipleOf", {"type": "integer", "multipleOf": 3}, "#"),
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, "#"),
    (
        "anyOf",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}],
        },
        "#",
    ),
    ("allOf", {"allOf": [{"type": "integer"}]}, "#"),
    ("patternProperties", {"type": "object", "patternProperties": {"^a": {}}}, "#"),
    ("minProperties", {"type": "object", "minProperties": 1}, "#"),
    ("format", {"type": "string", "format": "ipv4"}, "#"),
    ("not", {"not": {"type": "null"}}, "#"),
    ("additionalProperties", {"type": "object", "additionalProperties": {}}, "#"),
    ("properties", {"type": "object", "properties": {"a": {}, "z": {"type": "integer"}}}, "#"),
    ("properties", {"type": "array", "items": {}, "properties": {}}, "#"),
    (
        "pattern",
        {"type": "object", "properties": {"v": {"type": "string", "pattern": "^1.*$"}}},
        "#/properties/v",
    ),
]

LLGUIDANCE_REFUSED = [
    ("not", {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "#/properties/a"),
    ("if", {"if": {"type": "integer"}, "then": {"minimum": 3}}, "#"),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "#"),
    ("dependencies", {"type": "object", "dependencies": {"a": ["b"]}}, "#"),
    ("propertyNames", {"type": "object", "propertyNames": {"pattern": "^a"}}, "#"),
    ("unevaluatedProperties", {"type": "object", "unevaluatedProperties": False}, "#"),
    ("contains", {"type": "array", "contains": {"const": 5}}, "#"),
    ("format", {"type": "string", "format": "idn-email"}, "#"),
    ("oneOf", {"items": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "#/items"),
    ("$ref", {"$ref": "https://example.com/schema.json"}, "#"),
]
# Schemas xgrammar must refuse that llguidance enforces: (schema, a violating instance, a valid one)
XGRAMMAR_GAPS = [
    ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, "2", "5"),
    ({"type": "number", "multipleOf": 0.5}, "0.3", "1.5"),
    ({"$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a", "minimum": 3}, "2", "4"),
    (
        {"type": "object", "additionalProperties": False, "anyOf": [{"properties": {"x": {}}}]},
        '{"x":1}',
        "{}",
    ),
    ({"type": "object", "minProperties": 1}, "{}", '{"a":1}'),
]


def _compile(backend: str, key: GrammarKey) -> bytes:
    return make_compiler(backend, BYTES).compile_payload(key)


@pytest.mark.parametrize(
    ("backend", "keyword", "schema", "path"),
    [("xgrammar", *case) for case in XGRAMMAR_REFUSED]
    + [("outlines", *case) for case in OUTLINES_REFUSED]
    + [("llguidance", *case) for case in LLGUIDANCE_REFUSED],
)
def test_unenforceable_keyword_is_an_error_naming_it_and_its_path(backend, keyword, schema, path):
    with pytest.raises(InvalidRequestError) as info:
        _compile(backend, GrammarKey("json", json.dumps(schema)))
    err = info.value
    assert err.field == "json_schema"
    assert f"keyword {keyword!r}" in err.message and path in err.message, err.message
    assert backend in err.message


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "semver"},  # not a JSON Schema format: an annotation
        {"type": "integer", "minimum": 3, "maximum": 7},
        {"oneOf": [{"type": "integer"}, {"type": "string"}]},  # disjoint: exact
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}],
        },
        {"allOf": [{"type": "integer", "minimum": 3}]},
        {"description": "any value"},
    ],
)
def test_xgrammar_compiles_what_it_enforces(schema):
    assert _compile("xgrammar", GrammarKey("json", json.dumps(schema)))


@pytest.mark.parametrize(
    ("field", "kind", "spec"),
    [("ebnf", "ebnf", 'root ::= "a"'), ("structural_tag", "structural_tag", "{}")],
)
def test_outlines_refuses_grammar_kinds_it_lacks_naming_the_field(field, kind, spec):
    with pytest.raises(InvalidRequestError) as info:
        _compile("outlines", GrammarKey(kind, spec))
    assert info.value.field == field and "outlines" in info.value.message


def test_structural_tag_schema_is_checked_too():
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<f>", "schema": {"not": {"type": "null"}}, "end": "</f>"}],
        "triggers": ["<f>"],
    }
    with pytest.raises(InvalidRequestError) as info:
        _compile("xgrammar", GrammarKey("structural_tag", json.dumps(tag)))
    assert info.value.field == "structural_tag" and "'not'" in info.value.message


def _accepts(backend: str, schema: dict | GrammarKey, text: str) -> bool:
    """``text`` is a complete output of the grammar (a schema: compact JSON instances)."""
    compiler = make_compiler(backend, BYTES)
    key = schema if isinstance(schema, GrammarKey) else GrammarKey("json", json.dumps(schema))
    m = compiler.load(key, compiler.compile_payload(key)).matcher()
    return all(m.accept_token(b) for b in text.encode()) and m.can_end()


@pytest.mark.parametrize("backend", ["llguidance", "auto"])
@pytest.mark.parametrize(("schema", "bad", "good"), XGRAMMAR_GAPS)
def test_schemas_xgrammar_refuses_are_enforced_by_llguidance_and_auto(backend, schema, bad, good):
    with pytest.raises(InvalidRequestError):
        _compile("xgrammar", GrammarKey("json", json.dumps(schema)))
    assert _accepts(backend, schema, good)
    assert not _accepts(backend, schema, bad)


def test_auto_refuses_what_both_refuse_naming_the_keyword_for_each():
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    with pytest.raises(InvalidRequestError) as info:
        _compile("auto", GrammarKey("json", json.dumps(schema)))
    msg = info.value.message
    assert info.value.field == "json_schema"
    assert "xgrammar" in msg and "llguidance" in msg and msg.count("#/properties/a") == 2
    assert msg.index("llguidance") < msg.index("xgrammar")


def test_auto_takes_llguidance_first_and_xgrammar_for_what_only_it_parses():
    key = GrammarKey("json", json.dumps({"type": "integer", "minimum": 3}))
    assert _compile("auto", key).startswith(b"llguidance\0")
    lookahead = GrammarKey("ebnf", 'root ::= "a" b (= "c")\nb ::= "b"')  # xgrammar's EBNF only
    assert _compile("auto", lookahead).startswith(b"xgrammar\0")


def test_llguidance_treats_non_standard_formats_as_annotations():
    schema = {"type": "object", "properties": {"v": {"type": "string", "format": "semver"}}}
    assert _accepts("llguidance", schema, '{"v":"anything"}')
    assert _accepts("llguidance", {"const": {"format": "semver"}}, '{"format":"semver"}')


def test_llguidance_structural_tag_constrains_only_after_its_trigger():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5}}}
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<f>", "schema": {**schema, "required": ["n"]}, "end": "</f>"}],
        "triggers": ["<f>"],
    }
    key = GrammarKey("structural_tag", json.dumps(tag))
    assert _accepts("llguidance", key, 'any text <f>{"n":3}</f> more')
    assert not _accepts("llguidance", key, 'any text <f>{"n":9}</f>')
    assert not _accepts("llguidance", key, "<f>{}</f>")


def _allowed_after(backend: str, key: GrammarKey, prefix: bytes) -> set[int]:
    compiler = make_compiler(backend, BYTES)
    matcher = compiler.load(key, compiler.compile_payload(key)).matcher()
    for b in prefix:
        assert matcher.accept_token(b), (prefix, b)
    bitmask = torch.zeros((1, (BYTES.size + 31) // 32), dtype=torch.int32)
    matcher.fill_bitmask(bitmask, 0)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
    return {int(t) for t in np.flatnonzero(bits[: BYTES.size])}


LENGTH_BOUNDED = {"type": "string", "minLength": 2, "maxLength": 12}


@pytest.mark.parametrize("backend", ["xgrammar", "outlines", "llguidance"])
@pytest.mark.parametrize(
    "string", [LENGTH_BOUNDED, {"type": "string", "maxLength": 3}, {"type": "string"}]
)
def test_no_raw_control_character_inside_a_json_string(backend, string):
    """xgrammar 0.2.9 writes length-bounded strings with a class that admits raw control
    characters (invalid JSON); the backend narrows it."""
    schema = {"type": "object", "properties": {"p": string}, "required": ["p"]}
    allowed = _allowed_after(backend, GrammarKey("json", json.dumps(schema)), b'{"p":"a')
    assert ord("b") in allowed and not allowed & set(range(32)), sorted(allowed)[:40]


def test_no_raw_control_character_inside_a_structural_tag_string():
    tag = {
        "type": "structural_tag",
        "structures": [
            {
                "begin": "<f>",
                "schema": {"type": "object", "properties": {"p": LENGTH_BOUNDED}},
                "end": "</f>",
            }
        ],
        "triggers": ["<f>"],
    }
    allowed = _allowed_after(
        "xgrammar", GrammarKey("structural_tag", json.dumps(tag)), b'<f>{"p":"a'
    )
    assert ord("b") in allowed and not allowed & set(range(32)), sorted(allowed)[:40]


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance", "auto"])
def test_no_utf16_surrogate_inside_a_json_string(backend):
    schema = {"type": "object", "properties": {"p": {"type": "string"}}, "required": ["p"]}
    key = GrammarKey("json", json.dumps(schema))
    compiler = make_compiler(backend, BYTES)
    m = compiler.load(key, compiler.compile_payload(key)).matcher()
    assert all(m.accept_token(b) for b in '{"p":"é'.encode())
    assert m.accept_token(0xED) and not m.accept_token(0xA0)  # ED A0 80: U+D800, not UTF-8


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "enum": [1, "two"]},
        {"type": "string", "maxLength": 2, "enum": ["ab", "abc"]},
        {"type": "object", "properties": {"v": {"type": "string", "const": 3}}},
    ],
)
def test_xgrammar_refuses_values_its_siblings_reject(schema):
    with pytest.raises(InvalidRequestError) as info:
        _compile("xgrammar", GrammarKey("json", json.dumps(schema)))
    assert "enum" in info.value.message or "const" in info.value.message, info.value.message
    ok = {"type": "integer", "enum": [1, 2]}
    assert _compile("xgrammar", GrammarKey("json", json.dumps(ok)))
