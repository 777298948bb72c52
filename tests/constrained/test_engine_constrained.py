"""Constrained decoding end to end on the default model: regexes and JSON schemas, masks,
jump-forward, errors and isolation from unconstrained requests."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from plait.constrained.typed import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, dtype_to_regex
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError

pytestmark = pytest.mark.slow

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
WORDS = ["name", "city", "score", "tags", "level", "owner", "color", "size", "id", "note"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """An object schema mixing the features grammar backends enforce: nested objects, bounded
    arrays, enums, optional fields, bounded numbers and integers, booleans, patterned strings."""
    props: dict[str, dict] = {}
    for key in rng.sample(WORDS, rng.randint(2, 4)):
        kind = rng.choice(
            ["string", "pattern", "integer", "number", "boolean", "enum", "array"]
            + (["object"] if depth == 0 else [])
        )
        if kind == "string":
            props[key] = {"type": "string", "maxLength": rng.randint(3, 10)}
        elif kind == "pattern":
            props[key] = {"type": "string", "pattern": rng.choice([r"^[a-z]{1,6}$", r"^\d{3}$"])}
        elif kind == "integer":
            props[key] = {"type": "integer", "minimum": -999, "maximum": 999}
        elif kind == "number":
            props[key] = {"type": "number", "minimum": -99, "maximum": 99}
        elif kind == "boolean":
            props[key] = {"type": "boolean"}
        elif kind == "enum":
            props[key] = {"enum": rng.sample(["red", "green", "blue", "small", "large"], 3)}
        elif kind == "array":
            lo = rng.randint(0, 1)
            item = rng.choice([{"type": "boolean"}, {"enum": ["a", "b"]}])
            props[key] = {"type": "array", "items": item, "minItems": lo, "maxItems": lo + 2}
        else:
            props[key] = random_schema(rng, depth + 1)
    required = [k for k in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required}


SCHEMAS = [random_schema(random.Random(seed)) for seed in range(10)]
REGEXES = [
    r"[0-9]{3}-[0-9]{4}",
    r"(yes|no|maybe)",
    r"The answer is [0-9]{1,4}\.",
    r"[A-Z][a-z]{2,8}, [A-Z][a-z]{2,8}",
    r"\((a|b),(c|d)\)",
    r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)",
    REGEX_INT,
    REGEX_FLOAT,
    REGEX_BOOL,
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    cache = tmp_path_factory.mktemp("grammars")
    return Engine(max_total_tokens=16384, grammar_cache_dir=cache)


def _generate(engine: Engine, prompts: list[str], params: list[dict], jump: bool) -> list[dict]:
    engine.scheduler.grammar.jump_forward = jump
    try:
        return engine.generate(prompts, params)
    finally:
        engine.scheduler.grammar.jump_forward = True


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("jump", [True, False])
def test_every_json_output_validates_against_its_schema(engine, temperature, jump):
    prompts = [
        CHAT.format(f"Give a JSON object with {', '.join(s['properties'])}.") for s in SCHEMAS
    ]
    params = [
        {
            "json_schema": json.dumps(s),
            "max_new_tokens": 160,
            "temperature": temperature,
            "top_p": 0.9,
            "seed": i,
        }
        for i, s in enumerate(SCHEMAS)
    ]
    outs = _generate(engine, prompts, params, jump)
    for schema, out in zip(SCHEMAS, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), schema)
    engine.check_idle()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("jump", [True, False])
def test_every_regex_output_fully_matches(engine, temperature, jump):
    prompts = [CHAT.format("Answer briefly.")] * len(REGEXES)
    params = [
        {"regex": rx, "max_new_tokens": 48, "temperature": temperature, "seed": i}
        for i, rx in enumerate(REGEXES)
    ]
    outs = _generate(engine, prompts, params, jump)
    for rx, out in zip(REGEXES, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert re.fullmatch(rx, out["text"]), (rx, out["text"])


def test_jump_forward_takes_fewer_forwards_and_gives_the_same_object(engine):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
            "city": {"type": "string", "maxLength": 12},
        },
        "required": ["name", "age", "city"],
    }
    prompt = CHAT.format("Describe Bob, 31, from Paris, as JSON with name, age and city.")
    params = {"json_schema": json.dumps(schema), "max_new_tokens": 64, "temperature": 0}
    counts, objs = [], []
    for jump in (False, True):
        before = engine.scheduler.stats.forward_count
        out = _generate(engine, [prompt], [params], jump)[0]
        counts.append(engine.scheduler.stats.forward_count - before)
        objs.append(json.loads(out["text"]))
        jsonschema.validate(objs[-1], schema)
    assert objs[0] == objs[1]
    assert counts[1] < counts[0], counts


def test_unconstrained_requests_in_a_mixed_batch_give_their_solo_output(engine):
    plain = [CHAT.format("Name three fruits."), "The capital of France is"]
    solo_greedy = engine.generate(plain[0], {"max_new_tokens": 20, "temperature": 0})
    solo_sampled = engine.generate(
        plain[1], {"max_new_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    )
    schema = json.dumps(SCHEMAS[0])
    mixed = engine.generate(
        [plain[0], CHAT.format("JSON please."), plain[1], CHAT.format("A number?")],
        [
            {"max_new_tokens": 20, "temperature": 0},
            {"json_schema": schema, "max_new_tokens": 96, "temperature": 0},
            {"max_new_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 7},
            {"regex": r"[0-9]{2}", "max_new_tokens": 8, "temperature": 1.0, "seed": 3},
        ],
    )
    assert mixed[0]["output_ids"] == solo_greedy["output_ids"]
    assert mixed[2]["output_ids"] == solo_sampled["output_ids"]
    jsonschema.validate(json.loads(mixed[1]["text"]), SCHEMAS[0])
    assert re.fullmatch(r"[0-9]{2}", mixed[3]["text"])


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"regex": "(a"}, "regex", "cannot be compiled"),
        ({"regex": "(?<=a)b"}, "regex", "cannot be compiled"),
        ({"json_schema": "{not json"}, "json_schema", "not valid JSON"),
        ({"json_schema": json.dumps({"type": "frobnicate"})}, "json_schema", "invalid schema"),
        ({"regex": "a", "json_schema": "{}"}, "json_schema", "at most one"),
    ],
)
def test_invalid_specs_fail_alone_with_a_clear_error(engine, params, field, words):
    with pytest.raises(InvalidRequestError) as info:
        engine.generate("Hi", {**params, "max_new_tokens": 4})
    assert info.value.field == field and words in info.value.message
    out = engine.generate("Hi", {"max_new_tokens": 4, "temperature": 0, "regex": "[a-z]+"})
    assert (
        re.fullmatch("[a-z]+", out["text"]) or out["meta_info"]["finish_reason"]["type"] == "length"
    )
    engine.check_idle()


def test_compile_time_limit_fails_the_request_and_others_keep_going(engine):
    grammar = engine.scheduler.grammar
    grammar.compile_timeout = 1.0
    # a grammar bomb by size: minutes of compiling, so a 1 s limit is no race with the machine's
    # speed; the compile process is killed at the limit
    fields = {
        f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}[0-9]{1,40}$"} for i in range(3000)
    }
    # (llguidance, first in the default chain, refuses the uri-template format: xgrammar gets it)
    uri = {"type": "string", "format": "uri-template"}
    schema = json.dumps({"type": "object", "properties": {"u": uri, **fields}})
    try:
        with pytest.raises(InvalidRequestError, match="did not finish within 1 s"):
            engine.generate("Hi", {"json_schema": schema, "max_new_tokens": 4})
    finally:
        grammar.compile_timeout = 60.0
    out = engine.generate("The capital of France is", {"max_new_tokens": 4, "temperature": 0})
    assert out["meta_info"]["completion_tokens"] == 4
    engine.check_idle()


def test_typed_int_stops_at_whitespace(engine):
    typed = dtype_to_regex(int)
    out = engine.generate(
        CHAT.format("How many legs does a spider have? Answer with a number."),
        {"regex": typed.regex, "stop": typed.stop, "max_new_tokens": 8, "temperature": 0},
    )
    assert re.fullmatch(r"[-+]?[0-9]+", out["text"]), out["text"]
