"""Tool calls parsed out of text: the same result however the text arrives in pieces."""

from __future__ import annotations

import json

import pytest

from plait.runtime.server.tool_call_parser import ParsedCall, ToolCallParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def whole(mode: str, text: str, forced: str | None = None) -> list:
    p = ToolCallParser(mode, forced)
    return p.feed(text) + p.finish()


def pieces(mode: str, text: str, cut: list[int], forced: str | None = None) -> list:
    p = ToolCallParser(mode, forced)
    events, start = [], 0
    for end in [*cut, len(text)]:
        events += p.feed(text[start:end])
        start = end
    return events + p.finish()


def merged(events: list) -> tuple[str, list[ParsedCall]]:
    return "".join(e for e in events if isinstance(e, str)), [
        e for e in events if isinstance(e, ParsedCall)
    ]


TEXTS = [
    "Just text, no calls.  \n",
    f"Let me check. \n{CALL}",
    f"{CALL}\n{CALL.replace('Paris', 'Rome')}\n",
    f"Sure{CALL}then some text {CALL}",
    "<tool_call>not json</tool_call> after",
    '<tool_call>{"name": "f", "arguments": {"x": 1}}',  # EOS before the closing tag
    "a < b and <tool but not a call",
]


@pytest.mark.parametrize("text", TEXTS)
def test_any_split_gives_the_whole_result(text: str) -> None:
    expected = merged(whole("auto", text))
    for i in range(len(text) + 1):
        assert merged(pieces("auto", text, [i])) == expected, i
    assert merged(pieces("auto", text, list(range(1, len(text))))) == expected


def test_calls_content_and_layout() -> None:
    content, calls = merged(whole("auto", f"Let me check. \n{CALL}\n"))
    assert content == "Let me check."
    assert calls == [ParsedCall("get_weather", '{"city": "Paris"}')]
    text = "Just text, no calls.  \n"
    assert merged(whole("auto", text)) == (text, [])  # no calls: the text as generated
    content, calls = merged(whole("auto", "<tool_call>not json</tool_call> after"))
    assert content == "<tool_call>not json</tool_call> after" and calls == []
    _, calls = merged(whole("auto", '<tool_call>{"name": "f", "arguments": {"x": 1}}'))
    assert calls == [ParsedCall("f", '{"x": 1}')]


def test_required_and_named_outputs() -> None:
    text = json.dumps([{"name": "a", "arguments": {"q": 1}}, {"name": "b", "arguments": {}}])
    assert merged(whole("required", text))[1] == [
        ParsedCall("a", '{"q": 1}'),
        ParsedCall("b", "{}"),
    ]
    assert merged(whole("named", '{"q":1}', forced="a"))[1] == [ParsedCall("a", '{"q": 1}')]
    cut = '{"q": '  # stopped by max_tokens: the text stays content
    assert merged(whole("named", cut, forced="a")) == (cut, [])
    assert merged(whole("required", "[]")) == ("[]", [])
