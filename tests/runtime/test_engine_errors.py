"""Bad arguments to ``Engine.generate`` raise InvalidRequestError naming the field and the limit,
and leave the engine serving."""

from __future__ import annotations

import pytest

from plait import InvalidRequestError
from plait.runtime.engine import Engine

VOCAB = 320  # the tiny model's
PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(tiny_model_dir("llama"), max_total_tokens=1024, context_length=64)


def _serves(engine: Engine) -> None:
    engine.check_idle()
    out = engine.generate(input_ids=PROMPT, sampling_params={"max_new_tokens": 2})
    assert len(out["output_ids"]) == 2
    engine.check_idle()


@pytest.mark.parametrize(
    "params, field, limit",
    [
        ({"max_new_tokens": -1}, "max_new_tokens", ">= 0"),
        ({"max_new_tokens": "5"}, "max_new_tokens", "integer"),
        ({"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens", "max_new_tokens (4)"),
        ({"top_p": 0}, "top_p", "(0.0, 1.0]"),
        ({"top_p": 1.5}, "top_p", "(0.0, 1.0]"),
        ({"temperature": -1}, "temperature", "[0.0, 100.0]"),
        ({"temperature": float("nan")}, "temperature", "number"),
        ({"top_k": 0}, "top_k", ">= 1"),
        ({"top_logprobs_num": 21}, "top_logprobs_num", "[0, 20]"),
        ({"n": 0}, "n", "[1, 128]"),
        ({"stop_token_ids": [VOCAB]}, "stop_token_ids", f"[0, {VOCAB - 1}]"),
        ({"max_tokens": 5}, "max_tokens", "unknown sampling parameter"),
    ],
)
def test_bad_sampling_param_names_field_and_limit(engine, params, field, limit):
    with pytest.raises(InvalidRequestError) as err:
        engine.generate(input_ids=PROMPT, sampling_params=params)
    assert isinstance(err.value, ValueError)
    assert err.value.field == field
    assert field in str(err.value) and limit in str(err.value)
    _serves(engine)


@pytest.mark.parametrize(
    "kwargs, field, limit",
    [
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": ["abc", ""]}, "prompt", "empty"),
        ({"input_ids": []}, "input_ids", "empty"),
        ({"input_ids": [[5, 6], []]}, "input_ids", "empty"),
        ({"input_ids": [5, -1]}, "input_ids", f"[0, {VOCAB})"),
        ({"input_ids": [5, VOCAB]}, "input_ids", f"[0, {VOCAB})"),
        ({"input_ids": [[5, 6], [VOCAB]]}, "input_ids", f"[0, {VOCAB})"),
        ({"input_ids": [5] * 64}, "input_ids", "context length 64"),
        ({"input_ids": PROMPT, "top_logprobs_num": 21}, "top_logprobs_num", "[0, 20]"),
        ({"input_ids": PROMPT, "logprob_start_len": -2}, "logprob_start_len", ">= -1"),
        ({"prompt": "hello"}, "prompt", "without a tokenizer"),
        ({"prompt": "hello", "input_ids": PROMPT}, "prompt", "exactly one"),
        ({}, "prompt", "exactly one"),
        ({"input_ids": [[5], [6]], "sampling_params": [{}]}, "sampling_params", "(2)"),
        ({"input_ids": [[5], [6]], "rid": ["a"]}, "rid", "(2)"),
    ],
)
def test_bad_request_names_field_and_limit(engine, kwargs, field, limit):
    with pytest.raises(InvalidRequestError) as err:
        engine.generate(**kwargs)
    assert err.value.field == field
    assert err.value.field in str(err.value) and limit in str(err.value)
    _serves(engine)


def test_streaming_request_is_validated_when_called_not_when_iterated(engine):
    with pytest.raises(InvalidRequestError) as err:
        engine.generate(input_ids=PROMPT, sampling_params={"top_k": 0}, stream=True)
    assert err.value.field == "top_k"
    _serves(engine)


def test_prompt_that_fits_stops_at_the_context_length(engine):
    out = engine.generate(input_ids=[5] * 60, sampling_params={"max_new_tokens": 20})
    assert out["meta_info"]["completion_tokens"] == 4
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    engine.check_idle()
