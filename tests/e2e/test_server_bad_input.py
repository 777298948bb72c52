"""Every request that once took the server down (or hung, or answered 500) is a 400 / 413 naming
the field against a real server on the tiny model, and the server serves the next request."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlparse

import httpx
import pytest

GOOD = {"text": "Hello", "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
BIG = 10**30


@pytest.fixture(scope="module")
def url(robust_server):
    return robust_server.url


def _raw(url: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", content=body, headers={"content-type": "application/json"}, timeout=60
    )


def _still_serves(url: str) -> None:
    r = httpx.post(f"{url}/generate", json=GOOD, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["output_ids"]) == 2


def _sp(**params) -> dict:
    return {"text": "Hello", "sampling_params": {"max_new_tokens": 1, **params}}


# (route, JSON body, the field the 400 names)
CASES = [
    # wrong types: each of these once killed the client's I/O thread
    ("/generate", _sp(skip_special_tokens="no"), "skip_special_tokens"),
    ("/generate", _sp(ignore_eos="yes"), "ignore_eos"),
    ("/generate", _sp(stop_token_ids=5), "stop_token_ids"),
    ("/generate", _sp(stop=[1]), "stop"),
    ("/generate", _sp(max_new_tokens="8"), "max_new_tokens"),
    ("/generate", _sp(regex=5), "regex"),
    ("/generate", {**GOOD, "return_logprob": "yes"}, "return_logprob"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "temperature": "hot"}, "temperature"),
    (
        "/v1/completions",
        {"prompt": "Hi", "max_tokens": 1, "skip_special_tokens": []},
        "skip_special_tokens",
    ),  # fmt: skip
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]},
        "messages[0].content",
    ),  # fmt: skip
    # integers past 64 bits
    ("/generate", _sp(max_new_tokens=BIG), "max_new_tokens"),
    ("/generate", _sp(top_k=BIG), "top_k"),
    ("/generate", _sp(min_new_tokens=BIG), "min_new_tokens"),
    ("/generate", _sp(seed=2**64), "seed"),
    ("/generate", {**GOOD, "return_logprob": True, "logprob_start_len": BIG}, "logprob_start_len"),
    ("/generate", {"input_ids": [BIG], "sampling_params": {"max_new_tokens": 1}}, "input_ids"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": BIG}, "max_tokens"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "top_k": BIG}, "top_k"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1, "n": BIG}, "n"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": BIG},
        "max_tokens",
    ),  # fmt: skip
    # rids: empty, duplicated within a request
    ("/generate", {**GOOD, "rid": ""}, "rid"),
    ("/generate", {"text": ["a", "b"], "rid": ["x", "x"], "sampling_params": {}}, "rid"),
    # fan-out: prompts x n past --max-sequences-per-request 16
    ("/v1/completions", {"prompt": ["a", "b", "c", "d"], "max_tokens": 1, "n": 8}, "n"),
    ("/generate", {"text": ["a"] * 17, "sampling_params": {"max_new_tokens": 1}}, "n"),
]


@pytest.mark.parametrize("path, body, field", CASES)
def test_a_bad_field_is_a_400_naming_it_and_the_server_serves_on(url, path, body, field):
    r = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    _still_serves(url)


SURROGATES = [
    ("/generate", b'{"text": "Hel\\ud800lo"}', "text"),
    (
        "/generate",
        b'{"text": "Hi", "sampling_params": {"stop": ["\\udc00"]}}',
        "sampling_params.stop[0]",
    ),  # fmt: skip
    ("/generate", b'{"text": "Hi", "rid": "\\ud800"}', "rid"),
    ("/v1/completions", b'{"prompt": ["ok", "\\ud83d"], "max_tokens": 1}', "prompt[1]"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        "messages[0].content",
    ),  # fmt: skip
    ("/v1/completions", b'{"prompt": "Hi", "\\ud800": 1}', "body"),
]


@pytest.mark.parametrize("path, raw, field", SURROGATES)
def test_a_lone_surrogate_is_a_400_naming_where_it_is(url, path, raw, field):
    r = _raw(url, path, raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert "Unicode" in r.json()["error"]["message"]
    _still_serves(url)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 30_000 + b"]" * 30_000,  # once a RecursionError and a 500
        b'{"text": "Hi", "x": ' + b"[" * 50 + b"]" * 50 + b"}",
        b'{"text": "Hi", "sampling_params": {"temperature": NaN}}',
        b'["not", "an", "object"]',
        b"\xff\xfe",
    ],
    ids=["deep", "deep-field", "nan", "array", "not-utf8"],
)
def test_malformed_json_is_a_400_not_a_500(url, raw):
    r = _raw(url, "/generate", raw)
    assert r.status_code == 400, r.text
    _still_serves(url)


def test_a_body_past_the_limit_is_a_413_before_it_is_read(url):
    big = b'{"text": "' + b"a" * 70_000 + b'"}'  # --max-request-bytes 65536
    r = _raw(url, "/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(100):
            yield b" " * 1024

    r = httpx.post(f"{url}/generate", content=chunks(), timeout=60)
    assert r.status_code == 413
    _still_serves(url)


def test_a_declared_huge_body_is_refused_without_sending_it(url):
    """Content-Length of 64 MB, nothing sent: the answer comes from the header alone."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n"
        )
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    _still_serves(url)


def test_duplicated_rids_in_flight_fail_the_second_not_hang(url):
    """Two concurrent requests with one rid: the second gets a 400, the first completes."""
    body = {"text": "Hi", "rid": "same", "sampling_params": {"max_new_tokens": 64,
                                                               "ignore_eos": True}}  # fmt: skip

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            async with c.stream("POST", f"{url}/generate", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_lines():
                    second = await c.post(f"{url}/generate", json=body)
                    break
                return [second]

    (second,) = asyncio.run(run())
    assert second.status_code in (200, 400), second.text  # 200 only if the first ended first
    if second.status_code == 400:
        assert second.json()["error"]["param"] == "rid"
    _still_serves(url)


def test_errors_do_not_expose_sockets_or_internals(url):
    for path, body in [("/generate", {"text": 5}), ("/v1/completions", {"prompt": None})]:
        text = httpx.post(f"{url}{path}", json=body, timeout=60).text
        assert "ipc://" not in text and "Traceback" not in text and "/tmp/" not in text


def test_a_null_field_means_its_default_and_the_server_serves_on(url):
    """The issue's first reproducer, ``skip_special_tokens: null``, once disabled the server;
    SGLang's client sends null for every field it leaves unset, so null is the default."""
    r = httpx.post(f"{url}/generate", json=_sp(skip_special_tokens=None), timeout=60)
    assert r.status_code == 200, r.text
    _still_serves(url)
