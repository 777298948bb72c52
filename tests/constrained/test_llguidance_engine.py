"""The llguidance backend end to end at temperature 1 on a tiny random model: a schema xgrammar
must refuse, GBNF and Lark grammars, regex, jump-forward from its forced bytes."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from plait.constrained.llguidance_backend import LIMITS
from plait.runtime.config import EngineConfig
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore

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


# ambiguous: the Earley items of a step grow with the output; over a limit of 8 at once
AMBIGUOUS = 'start: x x x x x x x x "!"\nx: "a" | "b" | x x'


def test_a_step_over_llguidance_limits_fails_its_request_alone(tiny_lm_dir, monkeypatch):
    monkeypatch.setitem(LIMITS, "step_max_items", 8)
    core = EngineCore(
        EngineConfig.from_kwargs(
            tiny_lm_dir, max_total_tokens=2048, grammar_backend="llguidance", grammar_cache_dir=None
        )
    )
    try:
        free = {"max_new_tokens": 6, "temperature": 1.0, "ignore_eos": True}
        core.add_request("bad", [5, 6, 7], SamplingParams.from_dict({**free, "ebnf": AMBIGUOUS}))
        core.add_request("free", [5, 6, 8], SamplingParams.from_dict(free))
        outs: dict[str, list] = {}
        while core.has_work:
            for o in core.step():
                outs.setdefault(o.rid, []).append(o)
        core.check_idle()
    finally:
        core.scheduler.grammar.cache.shutdown()
    (bad,) = outs["bad"]
    field, message, kind = bad.error
    assert (field, kind) == ("ebnf", "invalid_request")
    assert "step limits" in message and "Too many items" in message
    free_out = outs["free"][-1]
    assert free_out.error is None and free_out.finish_reason["type"] == "length"
    assert sum(len(o.new_ids) for o in outs["free"]) == 6
