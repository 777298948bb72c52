"""The runtime client and ``plait.Runtime`` against real worker processes: same output as the
in-process Engine, streaming, many threads at once, asyncio, abort and errors (worker death: test_worker_death.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import plait
from plait.runtime.client.generate_args import expand_n
from plait.runtime.client.runtime_client import RuntimeClient
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.process import start_worker

GREEDY = {"temperature": 0, "ignore_eos": True}
PROMPTS = [
    "Count: 1, 2, 3, 4,",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "The three primary colors are",
    "Water boils at",
    "My favourite fruit is",
    "In 1969, the first man on the moon",
]


@pytest.fixture(scope="module")
def tiny_worker(tiny_model_dir):
    w = start_worker(tiny_model_dir("llama"), max_total_tokens=4096)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def client(tiny_worker):
    c = RuntimeClient(tiny_worker.endpoint, None, is_alive=tiny_worker.is_alive)
    yield c
    c.close()


@pytest.fixture(scope="module")
def runtime():
    with plait.Runtime(max_total_tokens=4096) as rt:
        yield rt


def _wait_idle(client, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = client.stats()
        idle = (stats["running"], stats["queued"]) == (0, 0) and stats["kv_idle_ok"] is not None
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def _assert_idle(client) -> None:
    stats = _wait_idle(client)
    assert (stats["running"], stats["queued"], stats["kv_used_tokens"]) == (0, 0, 0)
    assert stats["kv_idle_ok"] is True


# ---- client on the tiny model -------------------------------------------------------------


def test_stream_chunks_accumulate_to_the_result(client):
    params = SamplingParams(max_new_tokens=6, **GREEDY)
    chunks = list(client.submit([5, 6, 7], params, stream=True))
    assert [c.meta_info["completion_tokens"] for c in chunks] == list(range(1, 7))
    assert [len(c.new_ids) for c in chunks] == [1] * 6
    assert [t for c in chunks for t in c.new_ids] == chunks[-1].output_ids
    assert [c.finished for c in chunks] == [False] * 5 + [True]
    plain = client.submit([5, 6, 7], params).result(timeout=10)
    assert plain.output_ids == chunks[-1].output_ids
    (only,) = list(client.submit([5, 6, 7], params))  # not streamed: the final chunk alone
    assert only.finished and only.output_ids == plain.output_ids


def test_n_expands_into_seeded_samples(client):
    params = SamplingParams(max_new_tokens=5, temperature=1.0, n=3, seed=10, ignore_eos=True)
    handles = [
        client.submit(s.input_ids, s.params, s.rid) for s in expand_n("many", [5, 6, 7], params)
    ]
    assert [h.rid for h in handles] == ["many-0", "many-1", "many-2"]
    outs = [h.result(10).output_ids for h in handles]
    assert len({tuple(o) for o in outs}) == 3
    one = SamplingParams(max_new_tokens=5, temperature=1.0, seed=11, ignore_eos=True)
    assert client.submit([5, 6, 7], one).result(10).output_ids == outs[1]
    with pytest.raises(InvalidRequestError, match="n"):
        client.submit([5, 6, 7], params)


def test_logprobs_accumulate_across_stream_chunks(client):
    params = SamplingParams(max_new_tokens=4, return_logprob=True, logprob_start_len=0, **GREEDY)
    last = list(client.submit([3, 4, 5], params, stream=True))[-1]
    plain = client.submit([3, 4, 5], params).result(10)
    for out in (last, plain):
        lps = out.meta_info["output_token_logprobs"]
        assert [t for _, t, _ in lps] == out.output_ids
        assert [t for _, t, _ in out.meta_info["input_token_logprobs"]] == [3, 4, 5]
    assert last.meta_info["output_token_logprobs"] == plain.meta_info["output_token_logprobs"]


def test_a_bad_request_raises_naming_the_field_and_the_next_succeeds(client):
    # the client sends what its caller verified; the worker checks again at its socket
    with pytest.raises(InvalidRequestError) as info:
        client.submit([5, 6], SamplingParams(max_new_tokens=-1)).result(10)
    assert info.value.field == "max_new_tokens"
    with pytest.raises(InvalidRequestError, match="input_ids"):
        client.submit([5, 100_000], SamplingParams()).result(10)
    out = client.submit([5, 6], SamplingParams(max_new_tokens=2, ignore_eos=True)).result(10)
    assert len(out.output_ids) == 2


def test_many_threads_complete_and_are_batched(client):
    params = SamplingParams(max_new_tokens=12, **GREEDY)
    before = client.stats()["forward_count"]
    results: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(t: int) -> None:
        try:
            barrier.wait()
            handles = [client.submit([t + 3, i + 3, 9], params) for i in range(4)]
            for i, h in enumerate(handles):
                results[(t, i)] = h.result(timeout=30).output_ids
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert len(results) == 64 and all(len(v) == 12 for v in results.values())
    forwards = client.stats()["forward_count"] - before
    assert forwards < 64 * 12 // 4  # one request at a time would take 768
    _assert_idle(client)


def test_async_iteration_from_an_event_loop(client):
    params = SamplingParams(max_new_tokens=5, **GREEDY)

    async def consume(ids):
        return [c async for c in client.submit(ids, params, stream=True)]

    async def main():
        return await asyncio.gather(*(consume([5, i, 7]) for i in range(10, 14)))

    runs = asyncio.run(main())
    assert all(len(r) == 5 and r[-1].finished for r in runs)
    sync = client.submit([5, 10, 7], params).result(10)
    assert runs[0][-1].output_ids == sync.output_ids


def test_an_iteration_left_early_is_resumed_and_a_drained_one_ends_at_once(client):
    params = SamplingParams(max_new_tokens=6, **GREEDY)
    whole = client.submit([5, 6, 7], params).result(10).output_ids

    async def in_two_parts(handle) -> tuple[list, list, list]:
        first = []
        async for c in handle:
            first.append(c)
            if len(first) == 2:
                break
        # the rest arrives in the first iteration's queue: every chunk pushed (the handle is
        # done), then one turn of the loop queues those handed to it
        deadline = time.monotonic() + 10
        while not handle.done and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert handle.done and handle.queued() == len(whole) - 2
        rest = await asyncio.wait_for(_collect(handle), 10)
        return first, rest, await asyncio.wait_for(_collect(handle), 10)

    first, rest, again = asyncio.run(in_two_parts(client.submit([5, 6, 7], params, stream=True)))
    assert [t for c in first + rest for t in c.new_ids] == whole and rest[-1].finished
    assert again == []

    handle = client.submit([5, 6, 7], params, stream=True)
    it = iter(handle)
    head = [next(it), next(it)]
    assert [t for c in head + _within(list, handle) for t in c.new_ids] == whole
    assert _within(list, handle) == []

    bad = client.submit([5, 10**9], params, stream=True)
    for _ in range(2):  # the error, each time
        with pytest.raises(InvalidRequestError):
            _within(list, bad)


async def _collect(handle) -> list:
    return [c async for c in handle]


def _within(fn, arg, seconds: float = 10):
    """``fn(arg)`` on a thread, failing the test (not hanging it) past ``seconds``."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn(arg))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"{fn.__name__} did not return in {seconds} s"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_cancel_and_early_close_free_the_kv(client):
    params = SamplingParams(max_new_tokens=400, **GREEDY)
    handle = client.submit([5, 6, 7, 8], params, stream=True)
    it = iter(handle)
    next(it)
    handle.cancel()
    last = list(it)[-1]
    assert last.meta_info["finish_reason"]["type"] == "abort"
    assert len(last.output_ids) < 400
    _assert_idle(client)

    queued = [client.submit([9, i, 9], params) for i in range(3)]
    for h in queued:
        h.cancel()
    assert all(h.result(10).meta_info["finish_reason"]["type"] == "abort" for h in queued)
    _assert_idle(client)


# ---- Runtime on SmolLM2 -------------------------------------------------------------------


@pytest.mark.slow
def test_runtime_greedy_output_equals_the_engine(runtime):
    params = {"max_new_tokens": 16, **GREEDY}
    engine = Engine(None, max_total_tokens=4096)
    ref = engine.generate(PROMPTS, params)
    del engine
    outs = runtime.generate(PROMPTS, params)
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in ref]
    assert [o["text"] for o in outs] == [r["text"] for r in ref]
    single = runtime.generate(PROMPTS[0], params)
    assert single["output_ids"] == ref[0]["output_ids"]
    assert single["meta_info"]["finish_reason"] == {"type": "length", "matched": None}


@pytest.mark.slow
def test_runtime_stream_joins_to_the_final_text_and_hides_stop_strings(runtime):
    params = {"max_new_tokens": 10, "stop": ", 7", **GREEDY}
    final = runtime.generate(PROMPTS[0], params)
    chunks = list(runtime.generate_stream(PROMPTS[0], params))
    assert "".join(c["delta"] for c in chunks) == chunks[-1]["text"] == final["text"] == " 5, 6"
    assert all(", 7" not in c["text"] for c in chunks)
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": ", 7"}


@pytest.mark.slow
def test_runtime_logprob_triples_carry_token_text(runtime):
    out = runtime.generate(PROMPTS[0], {"max_new_tokens": 3, **GREEDY}, return_logprob=True)
    lps = out["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lps] == out["output_ids"]
    assert [s for _, _, s in lps] == [runtime.tokenizer.decode([t]) for t in out["output_ids"]]


@pytest.mark.slow
def test_runtime_closing_a_stream_early_frees_its_kv(runtime):
    stream = runtime.generate_stream(PROMPTS[1], {"max_new_tokens": 200, **GREEDY})
    next(stream)
    stream.close()
    _assert_idle(runtime.client)


@pytest.mark.slow
def test_runtime_chat_template_and_bad_requests(runtime):
    text = runtime.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert "Hi" in text
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        runtime.generate("Hi", {"max_new_tokens": -1})
    with pytest.raises(InvalidRequestError, match="prompt"):
        runtime.generate("")
    again = runtime.generate("Hi", {"max_new_tokens": 2, "ignore_eos": True})
    assert again["meta_info"]["completion_tokens"] == 2


@pytest.mark.slow
def test_runtime_threads_generating_at_once_are_batched(runtime):
    params = {"max_new_tokens": 4, **GREEDY}
    before = runtime.stats()["forward_count"]
    outs: list[dict] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(4):
                outs.append(runtime.generate(f"{PROMPTS[(t + i) % 8]} {t}", params))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and len(outs) == 64
    assert all(o["meta_info"]["completion_tokens"] == 4 for o in outs)
    assert runtime.stats()["forward_count"] - before < 64 * 4 // 2
    _assert_idle(runtime.client)
