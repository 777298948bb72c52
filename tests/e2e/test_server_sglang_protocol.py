"""SGLang's native protocol on a real server process (tiny random model): the request shapes
SGLang's frontend and users send to ``/generate``, its response and streaming shapes, and the
routes beside it."""

from __future__ import annotations

import json
import re

import httpx
import pytest

GREEDY = {"temperature": 0, "ignore_eos": True}


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def _events(url: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", f"{url}/generate", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_the_body_sglangs_runtime_endpoint_sends_is_accepted(tiny_server):
    # sglang.RuntimeEndpoint.generate: global_config's two flags, then SglSamplingParams'
    # to_srt_kwargs() with its unset fields as null, then the request-level logprob fields
    body = {
        "text": "hello world",
        "sampling_params": {
            "skip_special_tokens": True,
            "spaces_between_special_tokens": True,
            "max_new_tokens": 4,
            "min_new_tokens": 0,
            "n": 1,
            "stop": [],
            "stop_token_ids": None,
            "stop_regex": None,
            "temperature": 0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "ignore_eos": True,
            "regex": None,
            "json_schema": None,
        },
        "return_logprob": True,
        "return_text_in_logprobs": True,
    }
    r = _post(tiny_server, "/generate", body)
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    assert meta["completion_tokens"] == 4
    assert meta["output_token_logprobs_length"] == len(meta["output_token_logprobs"]) == 4


@pytest.mark.parametrize(
    "sampling, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"beam_width": 2}, "beam_width"),
        ({"watermark": {"key": 1}}, "watermark"),
        ({"stop_regex": "(unclosed"}, "stop_regex"),
        ({"stream_interval": 0}, "stream_interval"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"seed": 1, "sampling_seed": 2}, "sampling_seed"),
    ],
)
def test_a_bad_sampling_field_is_a_400_naming_it(tiny_server, sampling, field):
    r = _post(tiny_server, "/generate", {"text": "hi", "sampling_params": sampling})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize("field", ["image_data", "lora_path", "custom_logit_processor"])
def test_a_request_field_plait_cannot_serve_is_a_400_naming_it(tiny_server, field):
    r = _post(tiny_server, "/generate", {"text": "hi", field: "x"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field


def test_max_new_tokens_zero_caches_the_prompt_and_returns_its_logprobs(tiny_server):
    prompt = "a prompt computed into the cache and nothing more"
    body = {
        "text": prompt,
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    out = _post(tiny_server, "/generate", body).json()
    meta = out["meta_info"]
    assert out["text"] == "" and out["output_ids"] == []
    assert meta["completion_tokens"] == 0 and meta["finish_reason"]["type"] == "length"
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert meta["input_token_logprobs"][0][0] is None  # the first token has no context
    again = _post(
        tiny_server, "/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 1}}
    )
    assert again.json()["meta_info"]["cached_tokens"] == meta["prompt_tokens"] - 1


def _greedy_text(url: str, prompt: str, n: int, **extra) -> dict:
    body = {"text": prompt, "sampling_params": {"max_new_tokens": n, **GREEDY, **extra}}
    r = _post(url, "/generate", body)
    assert r.status_code == 200, r.text
    return r.json()


def test_stop_regex_stops_and_cuts_unless_no_stop_trim(tiny_server):
    plain = _greedy_text(tiny_server, "count: one two", 24)["text"]
    piece = next(plain[i : i + 2] for i in range(2, len(plain) - 1) if plain[i : i + 2].strip())
    at = plain.find(piece)
    pattern = re.escape(piece)
    cut = _greedy_text(tiny_server, "count: one two", 24, stop_regex=pattern)
    assert cut["text"] == plain[:at]
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": piece}
    kept = _greedy_text(tiny_server, "count: one two", 24, stop_regex=[pattern], no_stop_trim=True)
    assert kept["text"].startswith(plain[: at + len(piece)]) and plain.startswith(kept["text"])


def test_no_stop_trim_keeps_the_stop_string(tiny_server):
    plain = _greedy_text(tiny_server, "more words here", 24)["text"]
    stop = next(plain[i : i + 2] for i in range(2, len(plain) - 1) if plain[i : i + 2].strip())
    at = plain.find(stop)
    assert _greedy_text(tiny_server, "more words here", 24, stop=stop)["text"] == plain[:at]
    kept = _greedy_text(tiny_server, "more words here", 24, stop=stop, no_stop_trim=True)
    # the whole output up to the token that completed the stop string
    assert kept["text"].startswith(plain[: at + len(stop)]) and plain.startswith(kept["text"])


def test_sampling_seed_is_seed(tiny_server):
    sampled = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}
    a = _post(tiny_server, "/generate", {"text": "x", "sampling_params": {**sampled, "seed": 7}})
    b = _post(
        tiny_server, "/generate", {"text": "x", "sampling_params": {**sampled, "sampling_seed": 7}}
    )
    assert a.json()["output_ids"] == b.json()["output_ids"]


def test_a_stream_carries_each_chunks_new_logprobs(tiny_server):
    body = {
        "text": "stream me",
        "sampling_params": {"max_new_tokens": 12, **GREEDY},
        "return_logprob": True,
        "top_logprobs_num": 2,
    }
    events = _events(tiny_server, body)
    whole = _post(tiny_server, "/generate", body).json()
    seen = 0
    for e in events:
        meta = e["meta_info"]
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - seen
        assert len(meta["output_top_logprobs"]) == len(meta["output_token_logprobs"])
        seen = meta["completion_tokens"]
    assert events[-1]["text"] == whole["text"]  # text stays cumulative
    streamed = [lp for e in events for lp in e["meta_info"]["output_token_logprobs"]]
    assert [t for _, t, _ in streamed] == whole["output_ids"]


def test_stream_interval_sends_a_chunk_every_k_tokens(tiny_server):
    body = {
        "text": "tick",
        "sampling_params": {"max_new_tokens": 10, "stream_interval": 4, **GREEDY},
    }
    counts = [e["meta_info"]["completion_tokens"] for e in _events(tiny_server, body)]
    assert counts[-1] == 10
    assert all(b - a >= 4 for a, b in zip([0, *counts[:-1]], counts[:-1]))


def test_batches_of_input_ids_with_rids_and_per_prompt_logprob_fields(tiny_server):
    body = {
        "input_ids": [[5, 6, 7], [8, 9]],
        "rid": ["first", "second"],
        "sampling_params": {"max_new_tokens": 2, **GREEDY},
        "return_logprob": [True, False],
        "return_text_in_logprobs": False,
    }
    outs = _post(tiny_server, "/generate", body).json()
    assert [o["meta_info"]["id"] for o in outs] == ["first", "second"]
    assert all(text is None for _, _, text in outs[0]["meta_info"]["output_token_logprobs"])
    assert "output_token_logprobs" not in outs[1]["meta_info"]
    r = _post(tiny_server, "/generate", {**body, "return_logprob": [True]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "return_logprob"


def test_server_info_model_info_and_the_join_route(tiny_server, tiny_lm_dir):
    for path in ("/server_info", "/get_server_info"):
        info = httpx.get(f"{tiny_server}{path}", timeout=30).json()
        assert info["max_total_num_tokens"] > 0 and info["internal_states"]
    model = httpx.get(f"{tiny_server}/model_info", timeout=30).json()
    assert model == httpx.get(f"{tiny_server}/get_model_info", timeout=30).json()
    assert model["model_path"] == str(tiny_lm_dir) and model["is_generation"] is True
    assert model["served_model_name"] == tiny_lm_dir.name
    assert model["architectures"] == ["LlamaForCausalLM"]
    join = {"src_rids": ["a", "b"], "dst_rid": "c"}
    assert _post(tiny_server, "/concate_and_append_request", join).status_code == 200
    bad = _post(tiny_server, "/concate_and_append_request", {"src_rids": "a", "dst_rid": "c"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "src_rids"
