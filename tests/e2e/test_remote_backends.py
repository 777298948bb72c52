"""``RuntimeEndpoint`` and ``OpenAI`` backends against a real plait server process (default
model), called directly with ``GenParams``; and the server's OpenAI ``echo``."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI as OpenAIClient

from plait.ir.sampling import GenParams
from plait.lang.choices import greedy_token_selection, unconditional_likelihood_normalized
from plait.runtime.chat_template import CHATML
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.endpoint import RuntimeEndpoint
from plait.runtime.interp.openai_backend import OpenAI, parse_messages

MODEL = "SmolLM2-135M-Instruct"
PROMPT = "The capital of France is"
CITIES = [" Paris", " London", " a banana"]
GREEDY = GenParams(max_new_tokens=8, temperature=0)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(plait_server):
    backend = RuntimeEndpoint(plait_server)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def completion_backend(plait_server):
    backend = OpenAI(MODEL, base_url=f"{plait_server}/v1", is_chat_model=False, max_retries=0)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def chat_backend(plait_server):
    backend = OpenAI(MODEL, base_url=f"{plait_server}/v1", max_retries=0)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def oai(plait_server):
    return OpenAIClient(base_url=f"{plait_server}/v1", api_key="unused", max_retries=0)


def _native(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _chat_prompt(backend, messages: list[dict[str, str]]) -> str:
    text = ""
    for m in messages:
        markers = backend.role_markers(m["role"])
        text += markers.prefix + m["content"] + markers.suffix
    return text + backend.role_markers("assistant").prefix


# ---- RuntimeEndpoint ------------------------------------------------------------------------


def test_endpoint_generate_is_the_native_api(endpoint, plait_server):
    got = endpoint.generate(PROMPT, GREEDY)
    want = _native(
        plait_server, {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    )
    assert got.text == want["text"] and "Paris" in got.text
    assert got.meta_info["completion_tokens"] == 8 and got.meta_info["prompt_tokens"] == 5
    stopped = endpoint.generate(PROMPT, GenParams(max_new_tokens=8, temperature=0, stop=["."]))
    assert stopped.text == got.text[: got.text.index(".")]
    assert stopped.meta_info["finish_reason"]["type"] == "stop"


def test_endpoint_stream_concatenates_to_generate(endpoint):
    params = GenParams(max_new_tokens=12, temperature=0)
    deltas = list(endpoint.generate_stream("List three colors:", params))
    assert len(deltas) > 1
    assert "".join(deltas) == endpoint.generate("List three colors:", params).text


def test_endpoint_closing_a_stream_aborts_the_request(endpoint, plait_server):
    params = GenParams(max_new_tokens=2000, ignore_eos=True)
    stream = endpoint.generate_stream("Once upon a time", params)
    assert next(stream)
    stream.close()
    deadline = time.monotonic() + 20
    while "plait:num_running_reqs 0.0" not in httpx.get(f"{plait_server}/metrics").text:
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.2)


def test_endpoint_select_scores_choice_tokens_by_mean_logprob(endpoint, plait_server):
    result = endpoint.select(PROMPT, CITIES, 0.0, None)
    assert result.decision == " Paris"
    scores = result.meta_info["normalized_prompt_logprobs"]
    assert len(scores) == 3 and scores[0] == max(scores)
    # each score is the mean logprob of exactly the choice's tokens, as a full-prompt logprob
    # request computes them
    for choice, score, lps in zip(CITIES, scores, result.meta_info["input_token_logprobs"]):
        full = _native(
            plait_server,
            {
                "text": PROMPT + choice,
                "sampling_params": {"max_new_tokens": 1},
                "return_logprob": True,
                "logprob_start_len": 0,
            },
        )["meta_info"]["input_token_logprobs"]
        tail = full[-len(lps) :]
        assert [t[1] for t in lps] == [t[1] for t in tail]
        assert "".join(t[2] for t in lps) == choice
        assert score == pytest.approx(sum(t[0] for t in tail) / len(tail), abs=1e-4)


def test_endpoint_select_heals_a_token_split_by_the_prompt(endpoint):
    # "is " + "Paris" tokenizes as "is", " Paris": the space moves into the choice's token
    result = endpoint.select(PROMPT + " ", ["Paris", "London"], 0.0, None)
    assert result.decision == "Paris"
    assert result.meta_info["input_token_logprobs"][0][0][2] == " Paris"


def test_endpoint_select_with_sglang_choice_methods(endpoint):
    greedy = endpoint.select(PROMPT, CITIES, 0.0, greedy_token_selection)
    assert greedy.decision == " Paris" and "greedy_logprob_matrix" in greedy.meta_info
    uncond = endpoint.select(PROMPT, CITIES, 0.0, unconditional_likelihood_normalized)
    assert uncond.decision in CITIES
    assert len(uncond.meta_info["normalized_unconditional_scores"]) == 3
    sampled = {endpoint.select(PROMPT, CITIES, 100.0, None).decision for _ in range(10)}
    assert sampled <= set(CITIES) and len(sampled) > 1  # near-uniform at a high temperature


def test_endpoint_role_markers_come_from_the_model_template(endpoint):
    assert endpoint.role_markers("user").prefix == "<|im_start|>user\n"
    assert endpoint.role_markers("assistant").suffix == "<|im_end|>\n"
    assert endpoint.default_system_prompt.startswith("You are a helpful AI assistant")
    assert endpoint.get_model_name() == MODEL


def test_endpoint_cache_prefix_then_flush(endpoint):
    prefix = "Question: what is the tallest mountain on Earth? Give a short answer.\n" * 3
    endpoint.flush_cache()
    endpoint.cache_prefix(prefix)
    hit = endpoint.generate(prefix + "Answer:", GenParams(max_new_tokens=1))
    assert hit.meta_info["cached_tokens"] >= hit.meta_info["prompt_tokens"] - 4
    endpoint.flush_cache()
    miss = endpoint.generate(prefix + "Answer:", GenParams(max_new_tokens=1))
    assert miss.meta_info["cached_tokens"] == 0


def test_endpoint_errors(endpoint, plait_server):
    with pytest.raises(InvalidRequestError) as e:
        endpoint.generate("hi", GenParams(temperature=-1.0))
    assert e.value.field == "temperature"
    with pytest.raises(InvalidRequestError) as e:
        list(endpoint.generate_stream("hi", GenParams(top_p=2.0)))
    assert e.value.field == "top_p"
    with pytest.raises(ConnectionError):
        RuntimeEndpoint("http://127.0.0.1:9")  # nothing listens on the discard port


# ---- OpenAI backend -------------------------------------------------------------------------


def test_openai_completion_model_generate_and_stream(completion_backend, oai):
    got = completion_backend.generate(PROMPT, GREEDY)
    want = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert got.text == want.choices[0].text and "Paris" in got.text
    assert got.meta_info["completion_tokens"] == 8
    assert got.meta_info["finish_reason"] == {"type": "length"}
    assert "".join(completion_backend.generate_stream(PROMPT, GREEDY)) == got.text


def test_openai_chat_model_sends_the_messages(chat_backend, oai):
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    prompt = _chat_prompt(chat_backend, messages)
    assert parse_messages(prompt, CHATML) == [*messages, {"role": "assistant", "content": None}]
    got = chat_backend.generate(prompt, GREEDY)
    want = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    assert got.text == want.choices[0].message.content and got.text
    assert "".join(chat_backend.generate_stream(prompt, GREEDY)) == got.text


def test_openai_chat_model_needs_gen_right_after_assistant(chat_backend):
    prompt = _chat_prompt(chat_backend, [{"role": "user", "content": "Hi"}])
    with pytest.raises(InvalidRequestError, match="right after an assistant"):
        chat_backend.generate(prompt + "Sure, ", GREEDY)
    with pytest.raises(InvalidRequestError, match="right after an assistant"):
        chat_backend.generate("plain text", GREEDY)


def test_openai_select_by_echo_matches_the_native_scores(completion_backend, endpoint):
    got = completion_backend.select(PROMPT, CITIES, 0.0, None)
    assert got.decision == " Paris"
    native = endpoint.select(PROMPT, CITIES, 0.0, None)
    assert got.meta_info["normalized_prompt_logprobs"] == pytest.approx(
        native.meta_info["normalized_prompt_logprobs"], abs=1e-3
    )
    healed = completion_backend.select(PROMPT + " ", ["Paris", "London"], 0.0, None)
    assert healed.decision == "Paris"


def test_openai_select_on_a_chat_model_is_a_clear_error(chat_backend):
    with pytest.raises(InvalidRequestError, match="chat model"):
        chat_backend.select(PROMPT, CITIES, 0.0, None)


def test_openai_bad_parameter_names_the_field(completion_backend):
    with pytest.raises(InvalidRequestError) as e:
        completion_backend.generate(PROMPT, GenParams(top_p=3.0))
    assert e.value.field == "top_p"


# ---- the server's echo ----------------------------------------------------------------------


def test_completion_echo_returns_prompt_logprobs(oai):
    r = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    c = r.choices[0]
    lp = c.logprobs
    assert c.text.startswith(PROMPT) and len(c.text) > len(PROMPT)
    assert len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens == 8
    assert "".join(lp.tokens) == c.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    plain = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert c.text == PROMPT + plain.choices[0].text


def test_completion_echo_stream_and_batch(oai):
    kw = dict(model=MODEL, max_tokens=4, temperature=0, echo=True)
    prompts = [PROMPT, "List three colors:"]
    full = oai.completions.create(prompt=prompts, **kw)
    assert [c.text[: len(p)] for c, p in zip(full.choices, prompts)] == prompts
    assert full.choices[0].logprobs is None
    stream = oai.completions.create(prompt=PROMPT, stream=True, **kw)
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text


def test_json_schema_reaches_both_servers_apis(endpoint, chat_backend):
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 16}},
        "required": ["city"],
    }
    params = GenParams(max_new_tokens=32, temperature=0, json_schema=json.dumps(schema))
    native = endpoint.generate(PROMPT + " (as JSON): ", params)
    jsonschema.validate(json.loads(native.text), schema)
    prompt = _chat_prompt(chat_backend, [{"role": "user", "content": "Name a city as JSON."}])
    chat = chat_backend.generate(prompt, params)
    jsonschema.validate(json.loads(chat.text), schema)
