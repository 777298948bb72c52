"""Every request field of the installed ``openai`` client either works or is a 400 naming it;
and the fields SGLang and vLLM users rely on (``logit_bias``, ``best_of``, ``suffix``,
``stream_options``, ``max_completion_tokens``) do what they say. On the tiny random model."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import BadRequestError, OpenAI
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params
from transformers import AutoTokenizer

MESSAGES = [{"role": "user", "content": "Say yes."}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# A value a user would plausibly send for each field; a field not here (added to the client
# after this test was written) is sent as "x", which the server must refuse by name.
EXAMPLES = {
    "model": "tiny",
    "prompt": "Say yes.",
    "messages": MESSAGES,
    "best_of": 2,
    "echo": True,
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "logit_bias": {"100": 5.0},
    "max_tokens": 3,
    "max_completion_tokens": 3,
    "n": 2,
    "seed": 7,
    "stop": ["zz"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "suffix": " and that is all.",
    "temperature": 0.5,
    "top_p": 0.9,
    "user": "user-1",
    "audio": {"voice": "alloy", "format": "wav"},
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "metadata": {"team": "a"},
    "modalities": ["text"],
    "moderation": {"model": "omni-moderation-latest"},
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "yes"},
    "prompt_cache_key": "k1",
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "in_memory",
    "reasoning_effort": "low",
    "response_format": {"type": "text"},  # json ones compile a grammar: tested elsewhere
    "safety_identifier": "hash-1",
    "service_tier": "auto",
    "store": False,
    "tool_choice": "auto",
    "tools": [TOOL],
    "top_logprobs": 2,
    "verbosity": "low",
    "web_search_options": {},
}


def client_fields(module) -> list[str]:
    """The request fields of one create method, as the installed client declares them."""
    names: set[str] = set()
    for kind in (module.CompletionCreateParamsNonStreaming, module.CompletionCreateParamsStreaming):
        names |= set(kind.__required_keys__) | set(kind.__optional_keys__)
    return sorted(names)


ROUTES = {
    "/v1/completions": (completion_create_params, {"logprobs": 2}),
    "/v1/chat/completions": (chat_create_params, {"logprobs": True}),
}
CASES = [
    (path, name)
    for path, (module, _) in ROUTES.items()
    for name in client_fields(module)
    if name not in ("model", "prompt", "messages")
]


@pytest.mark.parametrize(
    "path,name", CASES, ids=[f"{'chat' if 'chat' in p else 'completions'}:{n}" for p, n in CASES]
)
def test_each_client_field_works_or_is_refused_by_name(tiny_chat_server, path, name):
    _, own = ROUTES[path]
    body = {"model": "tiny", "max_tokens": 3}
    body |= {"prompt": "Say yes."} if path == "/v1/completions" else {"messages": MESSAGES}
    body[name] = own.get(name, EXAMPLES.get(name, "x"))
    r = httpx.post(f"{tiny_chat_server}{path}", json=body, timeout=120)
    if r.status_code == 400:
        assert r.json()["error"]["param"].split(".")[0] == name, r.text
    else:
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def oai(tiny_chat_server) -> OpenAI:
    return OpenAI(base_url=f"{tiny_chat_server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_logit_bias_steers_both_routes(oai, tiny_lm_dir):
    [yes] = AutoTokenizer.from_pretrained(tiny_lm_dir).encode(" yes", add_special_tokens=False)
    bias = {str(yes): 100}
    r = oai.completions.create(
        model="tiny", prompt="Say yes.", max_tokens=4, temperature=1.0, seed=1, logit_bias=bias
    )
    assert r.choices[0].text == " yes" * 4
    kw = dict(model="tiny", messages=MESSAGES, max_completion_tokens=6, temperature=0)
    plain = oai.chat.completions.create(**kw).choices[0].message.content
    steered = oai.chat.completions.create(**kw, logit_bias=bias).choices[0].message.content
    assert steered.startswith(" yes") and not plain.startswith(" yes")
    for bad in [{"999999": 1}, {"5": 101}]:
        with pytest.raises(BadRequestError) as e:
            oai.completions.create(model="tiny", prompt="a", logit_bias=bad)
        assert e.value.body["param"] == "logit_bias"


def test_best_of_returns_the_candidates_with_the_best_mean_logprob(oai):
    kw = dict(model="tiny", prompt="Say yes.", max_tokens=5, seed=3, logprobs=0)
    all3 = oai.completions.create(**kw, n=3, extra_body={"ignore_eos": True})
    best = oai.completions.create(**kw, n=1, best_of=3, extra_body={"ignore_eos": True})

    def mean(c) -> float:
        return sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs)

    top = max(all3.choices, key=mean)
    assert [c.text for c in best.choices] == [top.text]
    assert best.choices[0].index == 0
    assert best.usage.completion_tokens == all3.usage.completion_tokens == 15
    for bad in [dict(n=2, best_of=1), dict(best_of=2, stream=True)]:
        with pytest.raises(BadRequestError) as e:
            oai.completions.create(model="tiny", prompt="a", **bad)
        assert e.value.body["param"] == "best_of"


def test_suffix_is_refused_by_name(oai):
    with pytest.raises(BadRequestError) as e:
        oai.completions.create(model="tiny", prompt="def f(", suffix="\n    return x")
    assert e.value.body["param"] == "suffix"


def test_max_completion_tokens_and_usage_at_the_end_of_the_stream(oai):
    stream = oai.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_completion_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_unknown_fields_and_stream_options_are_named(tiny_chat_server):
    url = f"{tiny_chat_server}/v1/chat/completions"
    for extra, param in [
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stream": True, "stream_options": {"bogus": True}}, "stream_options.bogus"),
        ({"store": True}, "store"),
    ]:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, **extra}
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
        assert json.loads(r.text)["error"]["message"]
