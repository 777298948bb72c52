"""One request's failure stays with that request: the client's I/O thread, the thread that
delivers records, and ``plait.Runtime`` / ``Engine`` serve the next request, whatever the bad one
carried (integers past 64 bits, lone surrogates, duplicated rids, unreadable output)."""

from __future__ import annotations

import pytest

import plait
from plait.runtime.client.handle import RequestHandle, deliver
from plait.runtime.client.output_stream import OutputStream, TokenTextCache
from plait.runtime.client.runtime_client import RuntimeClient
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.messages import ReqOutput
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.tokenizer import load_tokenizer
from plait.runtime.worker.process import start_worker

GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    w = start_worker(tiny_model_dir("llama"), max_total_tokens=2048)
    c = RuntimeClient(w.endpoint, None, is_alive=w.is_alive)
    yield c
    c.close()
    w.stop()


def _serves(c: RuntimeClient) -> None:
    out = c.submit([5, 6, 7], SamplingParams(max_new_tokens=3, **GREEDY)).result(timeout=60)
    assert len(out.output_ids) == 3


@pytest.mark.parametrize(
    "params, rid",
    [
        (SamplingParams(max_new_tokens=10**30), None),  # msgpack cannot encode it
        (SamplingParams(max_new_tokens=2, stop=["\ud800"]), None),
        (SamplingParams(max_new_tokens=2), "lone-\udc00"),
    ],
    ids=["int-past-64-bits", "surrogate-stop", "surrogate-rid"],
)
def test_an_unsendable_request_fails_alone_and_the_io_thread_serves_on(client, params, rid):
    """These skip the boundary's checks (``submit`` trusts its caller): the I/O thread must
    still survive them."""
    handle = client.submit([5, 6], params, rid=rid)
    with pytest.raises(InvalidRequestError, match="request"):
        handle.result(timeout=30)
    assert not client.dead
    _serves(client)


def test_a_duplicated_rid_in_flight_fails_the_second_and_the_first_completes(client):
    params = SamplingParams(max_new_tokens=40, **GREEDY)
    first = client.submit([5, 6, 7], params, rid="dup")
    second = client.submit([5, 6, 8], params, rid="dup")
    with pytest.raises(InvalidRequestError, match="already in flight") as e:
        second.result(timeout=30)
    assert e.value.field == "rid"
    assert len(first.result(timeout=60).output_ids) == 40
    _serves(client)


def test_a_record_its_stream_cannot_read_fails_that_request_alone(tiny_lm_dir):
    """``skip_special_tokens=None`` once made the detokenizer raise on the I/O thread."""
    tok = load_tokenizer(tiny_lm_dir)
    texts = TokenTextCache(tok)
    aborted: list[str] = []
    bad, good = RequestHandle("bad", aborted.append), RequestHandle("good", aborted.append)
    live = {
        "bad": (bad, OutputStream("bad", SamplingParams(skip_special_tokens=None), tok, texts)),
        "good": (good, OutputStream("good", SamplingParams(), tok, texts)),
    }
    deliver(live, ReqOutput("bad", 0, [70, 71]))
    deliver(live, ReqOutput("good", 0, [70, 71], {"type": "length", "matched": None}))
    with pytest.raises(RuntimeError, match="failed reading its output"):
        bad.result(timeout=1)
    assert aborted == ["bad"]  # its KV is released on the worker
    assert good.result(timeout=1).output_ids == [70, 71]
    assert live == {}


@pytest.fixture(scope="module")
def runtime(tiny_lm_dir):
    with plait.Runtime(tiny_lm_dir, max_total_tokens=2048) as rt:
        yield rt


@pytest.fixture(scope="module")
def engine(tiny_lm_dir):
    return Engine(tiny_lm_dir, max_total_tokens=2048)


BAD_CALLS = [
    ({"prompt": "Hi", "sampling_params": {"max_new_tokens": 10**30}}, "max_new_tokens"),
    ({"prompt": "Hi", "sampling_params": {"top_k": 10**30}}, "top_k"),
    ({"prompt": "Hi", "sampling_params": {"skip_special_tokens": "no"}}, "skip_special_tokens"),
    ({"prompt": "Hi\ud800"}, "prompt"),
    ({"prompt": "Hi", "sampling_params": {"stop": ["\udc00"]}}, "stop"),
    ({"prompt": "Hi", "rid": "\ud800"}, "rid"),
    ({"prompt": "Hi", "rid": ""}, "rid"),
]


@pytest.mark.parametrize("kwargs, field", BAD_CALLS)
def test_runtime_rejects_a_bad_call_by_field_and_serves_on(runtime, kwargs, field):
    with pytest.raises(InvalidRequestError) as e:
        runtime.generate(**kwargs)
    assert e.value.field == field
    out = runtime.generate("Hi", {"max_new_tokens": 2, **GREEDY})
    assert len(out["output_ids"]) == 2


def test_runtime_duplicated_rids_in_one_call_fail_not_hang(runtime):
    with pytest.raises(InvalidRequestError, match="rid"):
        runtime.generate(["a", "b"], {"max_new_tokens": 30, **GREEDY}, rid=["x", "x"])
    assert len(runtime.generate("Hi", {"max_new_tokens": 2, **GREEDY})["output_ids"]) == 2


@pytest.mark.parametrize("kwargs, field", BAD_CALLS)
def test_engine_rejects_a_bad_call_by_field_and_serves_on(engine, kwargs, field):
    with pytest.raises(InvalidRequestError) as e:
        engine.generate(**kwargs)
    assert e.value.field == field
    assert len(engine.generate("Hi", {"max_new_tokens": 2, **GREEDY})["output_ids"]) == 2
    engine.check_idle()
