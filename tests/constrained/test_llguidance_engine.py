"""The llguidance backend end to end at temperature 1 on a tiny random model: a schema xgrammar
must refuse, GBNF and Lark grammars, regex, jump-forward from its forced bytes."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError

# xgrammar refuses it (an intersection of several schemas); llguidance enforces it exactly
INTERSECTION = {
    "allOf": [
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 2, "maximum": 9}},
            "required": ["n"],
        },
        {"properties": {"n": {"multipleOf": 2}}},
    ]
}
ITEM = r"\((?:[a-c]|yes|no)(?:,(?:[a-c]|yes|no))*\)"


@pytest.fixture(scope="module")
def engine(tiny_lm_dir):
    e = Engine(
        tiny_lm_dir, max_total_tokens=4096, grammar_cache_dir=None, grammar_backend="llguidance"
    )
    yield e
    e.scheduler.grammar.cache.shutdown()


def _finished(engine: Engine, params: dict, n: int = 6, max_new: int = 64) -> list[str]:
    ps = [{**params, "temperature": 1.0, "max_new_tokens": max_new, "seed": i} for i in range(n)]
    outs = engine.generate(["Answer:"] * n, ps)
    return [o["text"] for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]


def test_schema_xgrammar_refuses_holds_with_jump_forward(engine):
    finished = _finished(engine, {"json_schema": json.dumps(INTERSECTION)})
    assert finished
    for text in finished:
        jsonschema.validate(json.loads(text), INTERSECTION)
    assert engine.scheduler.grammar.num_jumps > 0  # '{"n":' is forced text


@pytest.mark.parametrize(
    "ebnf",
    [
        'root ::= "(" item ("," item)* ")"\nitem ::= [a-c] | "yes" | "no"',  # GBNF (SGLang)
        'start: "(" item ("," item)* ")"\nitem: /[a-c]/ | "yes" | "no"',  # Lark
    ],
)
def test_gbnf_and_lark_grammars(engine, ebnf):
    finished = _finished(engine, {"ebnf": ebnf})
    assert finished
    for text in finished:
        assert re.fullmatch(ITEM, text), text


def test_regex(engine):
    finished = _finished(engine, {"regex": r"[0-9]{2}-(ab|cd)"})
    assert finished
    for text in finished:
        assert re.fullmatch(r"[0-9]{2}-(ab|cd)", text), text


@pytest.mark.parametrize(
    ("params", "field", "needle"),
    [
        ({"json_schema": json.dumps({"not": {"type": "null"}})}, "json_schema", "'not' at #"),
        ({"ebnf": "root ::= ("}, "ebnf", "llguidance"),
        ({"regex": "(a"}, "regex", "llguidance"),
    ],
)
def test_refusals_are_errors_naming_the_field(engine, params, field, needle):
    with pytest.raises(InvalidRequestError) as info:
        engine.generate("Hi", {**params, "max_new_tokens": 4})
    assert info.value.field == field and needle in info.value.message, info.value.message
    out = engine.generate("Hi", {"regex": "(yes|no)", "max_new_tokens": 4, "temperature": 1.0})
    assert out["text"] in ("yes", "no")
