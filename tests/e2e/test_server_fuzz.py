"""Fuzzing the three generate routes of a real server (tiny model) with hypothesis: request
bodies built from the fields the server accepts, each field either a plausible value or junk
(wrong types, integers past 64 bits, lone surrogates, huge nesting, raw bytes). No answer may be
a 5xx, none may hang, and the server serves a plain request afterwards.

``PLAIT_FUZZ_EXAMPLES`` (default 300) sets the count; ``PLAIT_FUZZ_RANDOM=1`` draws new examples
instead of the fixed (derandomized) CI set. The status classes are printed (``-s``)."""

from __future__ import annotations

import collections
import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HANG_GUARD_S = 120.0
EXAMPLES = int(os.environ.get("PLAIT_FUZZ_EXAMPLES", "300"))
RANDOM = os.environ.get("PLAIT_FUZZ_RANDOM") == "1"

# ---- values -----------------------------------------------------------------------------------

big_ints = st.sampled_from([-1, 0, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**70)])
ints = st.one_of(st.integers(-3, 40), big_ints, st.integers(-(2**80), 2**80))
floats = st.one_of(
    st.floats(-3, 3), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308])
)
surrogates = st.builds(
    lambda a, c, b: a + chr(c) + b, st.text(max_size=6), st.integers(0xD800, 0xDFFF),
    st.text(max_size=6),
)  # fmt: skip
texts = st.one_of(st.text(max_size=24), surrogates)
words = st.sampled_from(["Hi", "Answer: yes", " Paris is", "def f(x):", "Once upon a time"])
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)
prompt_ids = st.lists(st.integers(0, 319), min_size=1, max_size=12)


def optional(**fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional=fields)


def route_bodies(clean: bool) -> dict[str, st.SearchStrategy]:
    """A body strategy per route: ``clean`` bodies hold plausible values only (most succeed);
    the others mix junk into any field."""

    def field(good: st.SearchStrategy) -> st.SearchStrategy:
        return good if clean else st.one_of(good, good, good, junk)

    def body(required: dict[str, st.SearchStrategy], **rest: st.SearchStrategy):
        if clean:
            return st.fixed_dictionaries(required, optional=rest)
        return st.fixed_dictionaries({}, optional={**required, **rest})

    if clean:
        stops = st.one_of(words, st.lists(words, max_size=2))
    else:
        stops = st.one_of(texts, st.lists(texts, max_size=3))
    sampling = dict(
        temperature=field(st.floats(0, 2)),
        top_p=field(st.floats(0.01, 1)),
        top_k=field(st.integers(-1, 50)),
        min_p=field(st.floats(0, 1)),
        frequency_penalty=field(st.floats(-2, 2)),
        presence_penalty=field(st.floats(-2, 2)),
        repetition_penalty=field(st.floats(0.1, 2)),
        seed=field(st.integers(0, 2**32)),
        stop=field(stops),
        stop_token_ids=field(st.lists(st.integers(0, 319), max_size=3)),
        ignore_eos=field(st.booleans()),
        skip_special_tokens=field(st.booleans()),
    )
    native_params = optional(
        max_new_tokens=field(st.integers(1, 12)),
        min_new_tokens=field(st.integers(0, 1)),
        n=field(st.integers(1, 3)),
        regex=field(st.sampled_from(["(yes|no)", "[a-c]{1,3}"])),
        **sampling,
    )
    texts_in = st.one_of(words, st.lists(words, min_size=1, max_size=3))
    ids_in = st.one_of(prompt_ids, st.lists(prompt_ids, min_size=1, max_size=2))
    prompt = st.one_of(
        st.fixed_dictionaries({"text": field(texts_in)}),
        st.fixed_dictionaries({"input_ids": field(ids_in)}),
    )
    if not clean:
        prompt = st.one_of(prompt, optional(text=field(texts), input_ids=field(prompt_ids)))
    rids = st.uuids().map(str) if clean else st.one_of(texts, st.lists(texts, max_size=3))
    rest = optional(
        sampling_params=field(native_params),
        rid=field(rids),
        stream=field(st.booleans()),
        return_logprob=field(st.booleans()),
        top_logprobs_num=field(st.integers(0, 5)),
        logprob_start_len=field(st.integers(-1, 3)),
    )
    native = st.tuples(prompt, rest).map(lambda pair: {**pair[0], **pair[1]})
    formats = [{"type": "text"}, {"type": "json_object"}] + ([] if clean else [{"type": "no"}])
    openai = dict(
        sampling,
        max_tokens=field(st.integers(1, 12)),
        n=field(st.integers(1, 3)),
        stream=field(st.booleans()),
        stream_options=field(optional(include_usage=field(st.booleans()))),
        response_format=field(st.sampled_from(formats)),
    )
    if not clean:
        openai["model"] = field(st.sampled_from(["tiny", "other"]))
    completions = body(
        {"prompt": field(st.one_of(words, st.lists(words, min_size=1, max_size=3), prompt_ids))},
        echo=field(st.booleans()),
        logprobs=field(st.integers(0, 5)),
        **openai,
    )
    roles = ["system", "user", "assistant"] + ([] if clean else ["robot"])
    parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": words}), min_size=1)
    message = body(
        {"role": field(st.sampled_from(roles)), "content": field(st.one_of(words, parts))}
    )
    chat = body(
        {"messages": field(st.lists(message, min_size=1, max_size=3))},
        logprobs=field(st.booleans()),
        **openai,
    )
    return {"/generate": native, "/v1/completions": completions, "/v1/chat/completions": chat}


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 5000).map(lambda d: b'{"text": "Hi", "x": ' + b"[" * d + b"]" * d + b"}"),
    st.sampled_from([b"", b"{", b'{"text": NaN}', b"[]", b"null", b'{"text": "a"}' * 2]),
)
ROUTES = ["/generate", "/v1/completions", "/v1/chat/completions"]


def bounded(body: dict) -> dict:
    """Fills an absent length with a small one: the defaults (128 / 256 tokens) would make a
    valid request slow on a loaded CPU, and this test is about what the server accepts."""
    if "prompt" in body or "messages" in body:
        body.setdefault("max_tokens", 4)
        return body
    params = body.setdefault("sampling_params", {"max_new_tokens": 4})
    for p in params if isinstance(params, list) else [params]:
        if isinstance(p, dict):
            p.setdefault("max_new_tokens", 4)
    return body


requests = st.one_of(
    *(
        st.tuples(st.just(path), bodies.map(bounded).map(json.dumps).map(str.encode))
        for clean in (True, False)
        for path, bodies in route_bodies(clean).items()
    ),  # fmt: skip
    st.tuples(st.sampled_from(ROUTES), raw_bodies),
)

# ---- the run ----------------------------------------------------------------------------------

STATUS = collections.Counter()


def _post(client: httpx.Client, url: str, path: str, body: bytes) -> int:
    """Sends one request, reading a stream to its end; returns the status, or the code of an
    error event inside a stream."""
    headers = {"content-type": "application/json"}
    with client.stream("POST", f"{url}{path}", content=body, headers=headers) as r:
        status = r.status_code
        if status == 200 and r.headers.get("content-type", "").startswith("text/event-stream"):
            for line in r.iter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    status = max(status, json.loads(line[6:]).get("error", {}).get("code", 0))
        else:
            r.read()
    return status


@pytest.fixture(scope="module")
def fuzz_client():
    with httpx.Client(timeout=HANG_GUARD_S) as client:
        yield client


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking against a live server takes minutes
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],  # fmt: skip
)
@given(request=requests)
def test_fuzzed_requests_never_get_a_5xx_or_hang(robust_server, fuzz_client, request):
    path, body = request
    status = _post(fuzz_client, robust_server.url, path, body)  # a hang raises ReadTimeout
    STATUS[f"{status // 100}xx" if status >= 300 else str(status)] += 1
    assert status < 500, (path, body[:300])


def test_the_server_serves_after_the_fuzz(robust_server):
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
    r = httpx.post(f"{robust_server.url}/generate", json=body, timeout=HANG_GUARD_S)
    assert r.status_code == 200 and len(r.json()["output_ids"]) == 2
    print(f"\nfuzz: {sum(STATUS.values())} requests, status classes {dict(STATUS)}")
