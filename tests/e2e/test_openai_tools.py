"""OpenAI tool calling on a real server, driven by the official ``openai`` client.

Forced calls (``required``, a named function) run on the tiny random model at temperature 1:
whatever the weights, every call parses and validates against its function's schema. ``auto``
runs on SmolLM2, which calls a tool after a few example calls in the conversation.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import OpenAI

from plait.runtime.server.tool_calls import has_structural_tag

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
ALARM = {
    "type": "object",
    "properties": {"on": {"type": "boolean"}, "label": {"type": "string", "maxLength": 6}},
    "required": ["on"],
}
SCHEMAS = {"get_weather": WEATHER, "set_alarm": ALARM}
TOOLS = [
    {
        "type": "function",
        "function": {"name": name, "description": f"{name} tool", "parameters": schema},
    }
    for name, schema in SCHEMAS.items()
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tiny(tiny_chat_server) -> OpenAI:
    return OpenAI(base_url=f"{tiny_chat_server}/v1", api_key="unused", max_retries=0, timeout=120)


def _valid_calls(message, allowed: set[str]) -> list[tuple[str, dict]]:
    assert message.tool_calls, message
    out = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in allowed
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def _assembled(client: OpenAI, **kw):
    """The completion the client's stream helper assembles from the streamed deltas (its
    snapshot: ``get_final_completion`` also refuses outputs cut by ``max_tokens``)."""
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        return stream.current_completion_snapshot


def _same_message(streamed, whole) -> None:
    a, b = streamed.message, whole.message
    assert a.content == b.content
    calls = [(c.function.name, c.function.arguments) for c in a.tool_calls or []]
    assert calls == [(c.function.name, c.function.arguments) for c in b.tool_calls or []]
    assert streamed.finish_reason == whole.finish_reason


@pytest.mark.parametrize(
    "choice,allowed,parallel",
    [
        ("required", {"get_weather", "set_alarm"}, True),
        ("required", {"get_weather", "set_alarm"}, False),
        ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}, True),
        ({"type": "function", "function": {"name": "set_alarm"}}, {"set_alarm"}, False),
    ],
    ids=["required-parallel", "required-one", "named-weather", "named-alarm"],
)
def test_forced_calls_always_validate_at_temperature_1(tiny, choice, allowed, parallel):
    r = tiny.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        temperature=1.0,
        seed=11,
        n=3,
        max_completion_tokens=1000,  # a parallel array ends with probability ~1/2 per item
    )
    for c in r.choices:
        assert c.finish_reason == "tool_calls", c
        calls = _valid_calls(c.message, allowed)
        if not parallel:
            assert len(calls) == 1


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "set_alarm"}}, "auto"]
)
def test_stream_assembles_to_the_whole_message(tiny, choice):
    kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=60)
    for seed in range(2):
        whole = tiny.chat.completions.create(**kw, seed=seed)
        streamed = _assembled(tiny, **kw, seed=seed)
        _same_message(streamed.choices[0], whole.choices[0])


def test_tool_choice_none_and_no_tools_are_plain_chat(tiny):
    kw = dict(model="tiny", messages=ASK, max_tokens=12, seed=5, temperature=0)
    plain = tiny.chat.completions.create(**kw)
    none = tiny.chat.completions.create(**kw, tools=TOOLS, tool_choice="none")
    assert plain.choices[0].message.content == none.choices[0].message.content
    assert none.choices[0].message.tool_calls is None


def test_tool_results_go_back_into_the_conversation(tiny):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    convo = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = tiny.chat.completions.create(model="tiny", messages=convo, tools=TOOLS, max_tokens=8)
    short = tiny.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=8)
    assert r.usage.prompt_tokens > short.usage.prompt_tokens + len("sunny, 21 C")


BAD = [
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": TOOLS + TOOLS}, "tools"),
    (
        {
            "tools": TOOLS,
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
        "tool_choice",
    ),
    (
        {
            "messages": [
                *ASK,
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"functions": [{"name": "f"}]}, "functions"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[p for _, p in BAD])
def test_bad_tool_fields_are_a_400_naming_them(tiny_chat_server, extra, param):
    body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}
    r = httpx.post(f"{tiny_chat_server}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# ---- auto, on SmolLM2 ---------------------------------------------------------------------------

SMOL = "SmolLM2-135M-Instruct"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
}
CITY_TOOL = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": CITY,
        },
    }
]


def _few_shot(question: str) -> list[dict]:
    """Three example calls: enough for SmolLM2-135M to call the tool itself."""
    convo: list[dict] = []
    for i, city in enumerate(["Paris", "Rome", "Madrid"]):
        args = json.dumps({"city": city})
        call = {"id": f"call_{i}", "type": "function"}
        call["function"] = {"name": "get_weather", "arguments": args}
        convo += [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
    return [*convo, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def smol(plait_server) -> OpenAI:
    return OpenAI(base_url=f"{plait_server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.slow
def test_auto_call_is_parsed_and_streams_the_same(smol):
    kw = dict(model=SMOL, messages=_few_shot("Weather in Tokyo?"), tools=CITY_TOOL)
    kw |= dict(temperature=0, max_tokens=60)
    whole = smol.chat.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    _same_message(_assembled(smol, **kw).choices[0], choice)


@pytest.mark.slow
@pytest.mark.skipif(
    not has_structural_tag(),
    reason="SamplingParams has no structural_tag yet (the grammar backends add it): auto "
    "calls are parsed but their arguments are not constrained",
)
def test_auto_call_arguments_are_constrained_by_the_structural_tag(smol):
    # an enum the model would not write by itself: only the constraint makes calls validate
    upper = {"type": "object", "properties": {"city": {"enum": ["TOKYO", "OSLO"]}}}
    upper["required"] = ["city"]
    tools = [{**CITY_TOOL[0], "function": {**CITY_TOOL[0]["function"], "parameters": upper}}]
    calls = 0
    for seed in range(4):
        r = smol.chat.completions.create(
            model=SMOL,
            messages=_few_shot("Weather in Tokyo?"),
            tools=tools,
            temperature=1.0,
            seed=seed,
            max_tokens=60,
        )
        for call in r.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), upper)
            calls += 1
    assert calls > 0
