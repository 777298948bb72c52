"""Every kind of grammar end to end at temperature 1 on a tiny random model with a byte-level
tokenizer (the grammar alone makes outputs valid): numeric bounds, anyOf next to an object,
EBNF, structural tags, any JSON, real schemas from JSONSchemaBench; a grammar bomb fails alone."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest

from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError

BENCH = Path(__file__).parent / "data" / "jsonschemabench"
# The subset decoded in CI: schemas whose outputs stay short enough for a random model.
BENCH_SUBSET = [
    "Glaiveai2K/calculate_area_1f207537.json",
    "Glaiveai2K/calculate_mortgage_payment_b3e54742.json",
    "Glaiveai2K/create_invoice_5423b949.json",
]
# a grammar bomb by size: xgrammar needs minutes for these 3000 patterned properties;
# llguidance (first in the default `auto` chain) compiles these properties in seconds but
# refuses the uri-template format at once, so the compile reaches xgrammar, for which they
# are a bomb (minutes)
URI_TEMPLATE = {"type": "string", "format": "uri-template"}
BOMB_FIELDS = {
    f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}[0-9]{1,40}$"} for i in range(3000)
}
BOMB = json.dumps({"type": "object", "properties": {"u": URI_TEMPLATE, **BOMB_FIELDS}})


@pytest.fixture(scope="module")
def engine(tiny_lm_dir):
    e = Engine(tiny_lm_dir, max_total_tokens=4096, grammar_cache_dir=None)
    yield e
    e.scheduler.grammar.cache.shutdown()


def _run(engine: Engine, params: dict, n: int = 6, max_new: int = 96) -> list[dict]:
    ps = [{**params, "temperature": 1.0, "max_new_tokens": max_new, "seed": i} for i in range(n)]
    return engine.generate(["Answer:"] * n, ps)


def _finished(outs: list[dict]) -> list[str]:
    return [o["text"] for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 3, "maximum": 7},
                "x": {"type": "number", "exclusiveMinimum": -1.5, "maximum": 2},
            },
            "required": ["n", "x"],
        },
        {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 9},
                "b": {"type": "boolean"},
            },
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        {
            "type": "object",
            "properties": {
                "v": {
                    "oneOf": [
                        {"type": "integer"},  # xgrammar proves only bare types disjoint
                        {"type": "boolean"},
                    ]
                }
            },
            "required": ["v"],
        },
    ],
)
def test_bounds_and_alternatives_next_to_an_object_hold_at_temperature_1(engine, schema):
    finished = _finished(_run(engine, {"json_schema": json.dumps(schema)}))
    assert finished
    for text in finished:
        jsonschema.validate(json.loads(text), schema)


def test_real_schemas_give_valid_outputs(engine):
    for name in BENCH_SUBSET:
        schema = json.loads((BENCH / name).read_text())
        finished = _finished(_run(engine, {"json_schema": json.dumps(schema)}, n=3, max_new=160))
        for text in finished:
            jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


def test_ebnf_regex_and_any_json(engine):
    ebnf = 'root ::= "(" item ("," item)* ")"\nitem ::= [a-c] | "yes" | "no"'
    finished = _finished(_run(engine, {"ebnf": ebnf}))
    assert finished
    for text in finished:
        assert re.fullmatch(r"\((?:[a-c]|yes|no)(?:,(?:[a-c]|yes|no))*\)", text), text
    for text in _finished(_run(engine, {"regex": r"[0-9]{2}-(ab|cd)"})):
        assert re.fullmatch(r"[0-9]{2}-(ab|cd)", text), text
    for text in _finished(_run(engine, {"json_schema": json.dumps({"type": "object"})})):
        assert isinstance(json.loads(text), dict)


def test_min_new_tokens_lengthens_a_grammar_output_until_the_grammar_must_end(engine):
    """Below ``min_new_tokens`` the grammar goes on where it can; where it allows only its end,
    one stop token ends the output (not ``min_new_tokens`` copies of it)."""
    eos = engine.tokenizer.eos_token_id
    for o in _run(engine, {"regex": "[ab]{1,40}", "min_new_tokens": 12}, max_new=64):
        ids, reason = o["output_ids"], o["meta_info"]["finish_reason"]
        assert re.fullmatch("[ab]{12,40}", o["text"]), o["text"]
        assert ids.count(eos) == (reason["type"] == "stop")
    # ... and so does it with ignore_eos (SGLang's check_finished: the grammar's end ends it)
    for extra in ({"min_new_tokens": 10}, {"ignore_eos": True}):
        for o in _run(engine, {"regex": "(yes|no)", **extra}, max_new=32):
            assert o["text"] in ("yes", "no")
            assert o["output_ids"][-1] == eos and o["output_ids"].count(eos) == 1
            assert o["meta_info"]["finish_reason"] == {"type": "stop", "matched": eos}


def test_structural_tag_constrains_only_after_its_trigger(engine):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}},
        "required": ["n"],
    }
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<f>", "schema": schema, "end": "</f>"}],
        "triggers": ["<f>"],
    }
    outs = _run(engine, {"structural_tag": json.dumps(tag)}, n=8, max_new=64)
    for o in outs:
        for body in re.findall(r"<f>(.*?)</f>", o["text"], re.S):
            jsonschema.validate(json.loads(body), schema)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"ebnf": "root ::= ("}, "ebnf"), ({"structural_tag": '{"type": 1}'}, "structural_tag")],
)
def test_bad_grammars_are_errors_naming_the_field(engine, params, field):
    with pytest.raises(InvalidRequestError) as info:
        engine.generate("Hi", {**params, "max_new_tokens": 4})
    assert info.value.field == field


def test_grammar_bomb_fails_alone_in_bounded_time_and_frees_its_process(engine):
    grammar = engine.scheduler.grammar
    grammar.compile_timeout = 2.0
    try:
        with pytest.raises(InvalidRequestError, match="did not finish within") as info:
            engine.generate("Hi", {"json_schema": BOMB, "max_new_tokens": 4})
    finally:
        grammar.compile_timeout = 60.0
    assert info.value.field == "json_schema"
    killed = [pid for p in grammar.cache._all_procs for pid in p.killed]
    assert killed  # the process that ran the bomb is gone, and its CPU and memory with it
    for pid in killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    out = engine.generate("Hi", {"regex": "(yes|no)", "max_new_tokens": 4, "temperature": 1.0})
    assert out["text"] in ("yes", "no")
    engine.check_idle()
