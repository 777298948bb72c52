"""The HTTP server as a real process on loopback (worker-backed, default model), driven by the
official ``openai`` client and by httpx for the native API."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from openai import OpenAI

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["The capital of France is", "List three colors:", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def base_url(plait_server):
    return plait_server  # one server process per session (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def oai(base_url):
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _generate(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/generate", json=body, timeout=60)


def _sse(lines) -> list:
    events = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ---- OpenAI routes --------------------------------------------------------------------------


@pytest.mark.slow
def test_models_lists_the_served_model(oai):
    assert [m.id for m in oai.models.list().data] == [MODEL]


@pytest.mark.slow
def test_completion(oai):
    r = oai.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 5
    assert r.usage.total_tokens == 11


@pytest.mark.slow
def test_chat_completion_and_its_stream_agree(oai):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    full = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and text
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert deltas == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


@pytest.mark.slow
def test_completion_stream_concatenates_to_the_full_text(oai):
    full = oai.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=8, temperature=0)
    stream = oai.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text


@pytest.mark.slow
def test_completion_logprobs(oai):
    r = oai.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=5, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and chosen <= 0
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)  # greedy picks the top


@pytest.mark.slow
def test_chat_logprobs(oai):
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 4
    for entry in content:
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)


@pytest.mark.slow
def test_n_choices_and_seed(oai):
    kw = dict(model=MODEL, prompt=PROMPTS[2], max_tokens=4, temperature=1.0, n=3, seed=7)
    a, b = oai.completions.create(**kw), oai.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded
    assert a.usage.completion_tokens == 12 and a.usage.prompt_tokens == 4


@pytest.mark.slow
def test_stop_string_is_cut(oai):
    full = oai.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    text = full.choices[0].text  # " Paris.\n\nThe answer is:"
    stopped = oai.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0, stop=["."]
    )
    assert stopped.choices[0].text == text[: text.index(".")]
    assert stopped.choices[0].finish_reason == "stop"


# ---- native API -----------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_single_and_batch(base_url):
    params = {"max_new_tokens": 6, "temperature": 0}
    singles = [_generate(base_url, {"text": p, "sampling_params": params}).json() for p in PROMPTS]
    batch = _generate(base_url, {"text": PROMPTS, "sampling_params": params}).json()
    assert [b["text"] for b in batch] == [s["text"] for s in singles]
    assert [b["output_ids"] for b in batch] == [s["output_ids"] for s in singles]
    meta = singles[0]["meta_info"]
    assert meta["completion_tokens"] == 6 and meta["finish_reason"]["type"] == "length"
    by_ids = _generate(base_url, {"input_ids": batch[0]["output_ids"], "sampling_params": params})
    assert by_ids.status_code == 200 and len(by_ids.json()["output_ids"]) == 6


@pytest.mark.slow
def test_generate_logprobs(base_url):
    body = {
        "text": PROMPTS[0],
        "sampling_params": {"max_new_tokens": 3, "temperature": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 2,
    }
    meta = _generate(base_url, body).json()["meta_info"]
    assert len(meta["output_token_logprobs"]) == 3
    assert [len(row) for row in meta["output_top_logprobs"]] == [2, 2, 2]
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]


@pytest.mark.slow
def test_generate_stream_is_cumulative(base_url):
    body = {"text": PROMPTS[3], "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    full = _generate(base_url, body).json()
    with httpx.stream("POST", f"{base_url}/generate", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    texts = [e["text"] for e in events[:-1]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == full["text"] and events[-2]["output_ids"] == full["output_ids"]


@pytest.mark.slow
def test_64_concurrent_streams_match_non_streamed(base_url):
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(64)]
    params = {"max_new_tokens": 8, "temperature": 0}

    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"text": prompt, "sampling_params": params, "stream": True}
        async with client.stream("POST", f"{base_url}/generate", json=body) as r:
            assert r.status_code == 200
            events = _sse([line async for line in r.aiter_lines()])
        assert events[-1] == "[DONE]" and events[-2]["meta_info"]["finish_reason"]
        return events[-2]["text"]

    async def batch(client: httpx.AsyncClient) -> list[str]:
        body = {"text": prompts, "sampling_params": params}
        r = await client.post(f"{base_url}/generate", json=body)
        return [out["text"] for out in r.json()]

    async def run() -> tuple[list[str], list[str]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            # the non-streamed batch runs alongside the 64 streams, batched with them
            full, *streamed = await asyncio.gather(
                batch(client), *(one(client, p) for p in prompts)
            )
        return full, streamed

    full, streamed = asyncio.run(run())
    assert streamed == full


@pytest.mark.slow
def test_disconnect_mid_stream_aborts_the_request(base_url):
    body = {
        "text": PROMPTS[2],
        "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
        "stream": True,
    }
    with httpx.stream("POST", f"{base_url}/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{base_url}/metrics").text
        if "plait:num_running_reqs 0.0" in metrics and "plait:kv_usage 0.0" in metrics:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the abandoned request kept running")


# ---- validation -----------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "hi"}]
BAD = [
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, "model"),
    ("/v1/completions", {"model": MODEL}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": 5}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "8"}, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 0}, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": [[1, 2, 10**9]]}, "prompt"),
    (
        "/v1/completions",
        {"model": MODEL, "prompt": "hi", "presence_penalty": 3},
        "presence_penalty",
    ),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": 3}, "stop"),
    ("/v1/chat/completions", {"model": MODEL}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "logprobs": True, "top_logprobs": 50},
        "top_logprobs",
    ),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "seed": -1}, "seed"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": CHAT, "max_completion_tokens": -2},
        "max_completion_tokens",
    ),
    ("/generate", {"sampling_params": {}}, "text"),
    ("/generate", {"input_ids": [1, -3]}, "input_ids"),
    ("/generate", {"input_ids": [0] * 9000}, "input_ids"),
    ("/generate", {"text": "hi", "sampling_params": {"temperature": 1e9}}, "temperature"),
    ("/generate", {"text": "hi", "sampling_params": {"bogus": 1}}, "bogus"),
    ("/generate", {"text": "hi", "sampling_params": []}, "sampling_params"),
    (
        "/generate",
        {"text": "hi", "return_logprob": True, "top_logprobs_num": 21},
        "top_logprobs_num",
    ),
    ("/generate", {"text": "hi", "stream": "yes"}, "stream"),
    ("/generate", ["hi"], "body"),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{p}:{f}" for p, _, f in BAD])
def test_bad_request_is_a_400_naming_the_field(base_url, path, body, param):
    r = httpx.post(f"{base_url}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["code"] == 400
    assert err["message"]


@pytest.mark.slow
def test_malformed_json_then_the_server_still_serves(base_url, oai):
    r = httpx.post(
        f"{base_url}/v1/completions",
        content=b'{"prompt": "hi",',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    ok = oai.completions.create(model=MODEL, prompt="hi", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens == 2


# ---- operations -----------------------------------------------------------------------------


@pytest.mark.slow
def test_health_model_info_flush_and_metrics(base_url):
    assert httpx.get(f"{base_url}/health").status_code == 200
    info = httpx.get(f"{base_url}/get_model_info").json()
    assert info["context_length"] == 8192 and info["vocab_size"] == 49152
    template = info["chat_template"]  # what RuntimeEndpoint's chat roles need
    assert template["roles"]["user"] == {"prefix": "<|im_start|>user\n", "suffix": "<|im_end|>\n"}
    assert template["default_system_prompt"].startswith("You are a helpful AI assistant")
    assert httpx.post(f"{base_url}/flush_cache", timeout=30).status_code == 200
    _generate(base_url, {"text": "hi", "sampling_params": {"max_new_tokens": 2}})
    text = httpx.get(f"{base_url}/metrics").text
    for name in [
        "plait:num_running_reqs",
        "plait:num_queued_reqs",
        "plait:kv_usage",
        "plait:cache_hit_rate",
        "plait:prompt_tokens_total",
        "plait:generation_tokens_total",
        "plait:time_to_first_token_seconds_bucket",
        "plait:time_per_output_token_seconds_bucket",
    ]:
        assert name in text, name


# ---- API key (the app in process, on a tiny random model) -----------------------------------


def test_api_key_is_required_except_for_health(tiny_model_dir):
    from plait.runtime.engine import Engine
    from plait.runtime.server.app import create_app
    from plait.runtime.server.engine_thread import EngineThread

    engine = Engine(tiny_model_dir("llama"), max_total_tokens=1024)
    backend = EngineThread(engine.core)
    app = create_app(backend, None, "tiny", engine.context_len, engine.vocab_size, api_key="k1")
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3, "temperature": 0}}

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/health")).status_code == 200
            for path in ["/v1/models", "/metrics", "/get_model_info"]:
                assert (await client.get(path)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.post("/generate", json=body, headers=wrong)).status_code == 401
            r = await client.post("/generate", json=body)
            assert r.status_code == 401 and r.json()["error"]["code"] == 401
            good = {"Authorization": "Bearer k1"}
            r = await client.post("/generate", json=body, headers=good)
            assert r.status_code == 200 and len(r.json()["output_ids"]) == 3
            models = (await client.get("/v1/models", headers=good)).json()
            assert models["data"][0]["id"] == "tiny"

    try:
        asyncio.run(run())
        assert backend.stats()["running"] == 0
        engine.check_idle()
    finally:
        backend.close()


def test_dead_worker_fails_requests_quickly_with_503(tiny_model_dir):
    from plait.runtime.client.runtime_client import RuntimeClient
    from plait.runtime.server.app import create_app
    from plait.runtime.worker.process import start_worker

    # One request runs at a time, so the batch below needs 16 x 500 decode steps in sequence:
    # the kill comes while most of it still waits, however fast the machine.
    worker = start_worker(tiny_model_dir("llama"), max_total_tokens=1024, max_running_requests=1)
    client = RuntimeClient(worker.endpoint, None, is_alive=worker.is_alive)
    info = client.info
    app = create_app(client, None, "tiny", info["context_len"], info["vocab_size"])
    short = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}}
    batch = {
        "input_ids": [[5, 6, 7]] * 16,
        "sampling_params": {"max_new_tokens": 500, "ignore_eos": True},
    }

    async def running_stats() -> dict:
        # each answer comes between two worker steps, so the loop advances with the worker; the
        # batch's requests reach the worker one message each, so the first can run before the
        # rest are queued (seen on a fast host): wait until most of them are
        while True:
            stats = await asyncio.to_thread(client.stats, 5)
            if stats["running"] and stats["queued"] >= 8:
                return stats

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            assert (await c.post("/generate", json=short)).status_code == 200
            pending = asyncio.ensure_future(c.post("/generate", json=batch))
            stats = await asyncio.wait_for(running_stats(), 30)
            assert stats["running"] == 1 and stats["queued"] >= 8, stats  # in flight
            worker.proc.kill()
            start = time.monotonic()
            r = await pending
            assert r.status_code == 503 and r.json()["error"]["code"] == 503
            assert time.monotonic() - start < 10
            assert (await c.post("/generate", json=short)).status_code == 503
            assert (await c.get("/health")).status_code == 503

    try:
        asyncio.run(run())
    finally:
        client.close()
        worker.stop()
