"""Tool requests: validation, the prompt with and without a tools-aware template, and the
constraints a forced call gets."""

from __future__ import annotations

import json

import jsonschema
import pytest

from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.server.tool_calls import (
    DEFAULT_TOOL_PROMPT,
    constrain,
    prompt_messages,
    required_schema,
    structural_tag,
    tool_request,
)

ARGS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": ARGS}},
    {"type": "function", "function": {"name": "now"}},
]
CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
CONVO = [
    {"role": "user", "content": "find x"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "found", "tool_call_id": "c1"},
]


def test_default_prompt_puts_tools_calls_and_results_in_the_text() -> None:
    tools = tool_request({"tools": TOOLS})
    messages, definitions = prompt_messages(CONVO, tools, native=False)
    assert definitions is None
    system = messages[0]
    assert system["role"] == "system" and DEFAULT_TOOL_PROMPT.split("{")[0] in system["content"]
    assert json.dumps(TOOLS[0]) in system["content"]
    assert messages[2]["content"] == (
        '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>'
    )
    assert messages[3] == {"role": "user", "content": "<tool_response>\nfound\n</tool_response>"}


def test_native_template_gets_tools_and_argument_objects() -> None:
    tools = tool_request({"tools": TOOLS})
    messages, definitions = prompt_messages(CONVO, tools, native=True)
    assert [d["function"]["name"] for d in definitions] == ["search", "now"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"q": "x"}
    assert messages[2]["role"] == "tool"


def test_tool_choice_none_leaves_the_tools_out() -> None:
    tools = tool_request({"tools": TOOLS, "tool_choice": "none"})
    messages, _ = prompt_messages(CONVO[:1], tools, native=False)
    assert messages == CONVO[:1]


def test_required_schema_accepts_exactly_calls_of_the_tools() -> None:
    schema = required_schema(tool_request({"tools": TOOLS, "parallel_tool_calls": False}))
    jsonschema.validate([{"name": "search", "arguments": {"q": "a"}}], schema)
    jsonschema.validate([{"name": "now", "arguments": {}}], schema)
    for bad in [
        [],
        [{"name": "search", "arguments": {}}],
        [{"name": "other", "arguments": {}}],
        [{"name": "now", "arguments": {}}, {"name": "now", "arguments": {}}],
    ]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    parallel = required_schema(tool_request({"tools": TOOLS}))
    jsonschema.validate([{"name": "now", "arguments": {}}] * 2, parallel)


def test_constraints_per_tool_choice() -> None:
    named = {"type": "function", "function": {"name": "search"}}
    params = SamplingParams()
    constrain(tool_request({"tools": TOOLS, "tool_choice": named}), params)
    assert json.loads(params.json_schema) == ARGS
    params = SamplingParams()
    constrain(tool_request({"tools": TOOLS, "tool_choice": "required"}), params)
    assert json.loads(params.json_schema)["type"] == "array"
    with pytest.raises(InvalidRequestError) as e:
        constrain(tool_request({"tools": TOOLS, "tool_choice": "required"}), params)
    assert e.value.field == "tool_choice"


def test_structural_tag_in_sglang_shape() -> None:
    tag = structural_tag(tool_request({"tools": TOOLS}))
    assert tag["type"] == "structural_tag" and tag["triggers"] == ["<tool_call>"]
    first = tag["structures"][0]
    assert first["begin"].startswith("<tool_call>") and '"name": "search"' in first["begin"]
    assert first["schema"] == ARGS and first["end"].endswith("</tool_call>")
    # begin + arguments + end is one call in the format the parser reads
    text = first["begin"] + '{"q": "x"}' + first["end"]
    body = text.removeprefix("<tool_call>").removesuffix("</tool_call>")
    assert json.loads(body) == {"name": "search", "arguments": {"q": "x"}}
