"""Constrained decoding through the HTTP server (worker-backed, default model): native
``regex`` / ``json_schema`` sampling params, OpenAI ``response_format``, and 400s."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def test_native_regex_and_json_schema(plait_server):
    r = _post(
        plait_server,
        "/generate",
        {
            "text": ["My phone number is", "Bob is 31. As JSON:"],
            "sampling_params": [
                {"regex": r"[0-9]{3}-[0-9]{4}", "temperature": 0, "max_new_tokens": 16},
                {"json_schema": json.dumps(SCHEMA), "temperature": 0, "max_new_tokens": 48},
            ],
        },
    )
    assert r.status_code == 200, r.text
    phone, person = r.json()
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone["text"])
    jsonschema.validate(json.loads(person["text"]), SCHEMA)


def test_chat_response_format_json_schema_and_json_object(plait_server):
    ask = 'Describe Bob, who is 31, as JSON like {"name": "Ann", "age": 20}.'
    messages = [{"role": "user", "content": ask}]
    for fmt, schema in [
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}, SCHEMA),
        ({"type": "json_object"}, {"type": "object"}),
    ]:
        body = {"messages": messages, "response_format": fmt, "temperature": 0, "max_tokens": 64}
        r = _post(plait_server, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/generate", {"text": "hi", "sampling_params": {"regex": "(a"}}, "regex"),
        ("/generate", {"text": "hi", "sampling_params": {"json_schema": "{oops"}}, "json_schema"),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"schema": 3}},
            },
            "response_format.json_schema",
        ),
        (
            "/v1/completions",
            {"prompt": "hi", "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
    ],
)
def test_invalid_constraints_are_a_400_and_the_server_keeps_serving(
    plait_server, path, body, param
):
    r = _post(plait_server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    ok = _post(plait_server, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}})
    assert ok.status_code == 200
