"""The server's in-process model side: an EngineCore stepped on a thread, behind handles."""

from __future__ import annotations

import asyncio

import pytest

from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.server.engine_thread import EngineThread


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(tiny_model_dir("llama"), max_total_tokens=1024)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = EngineThread(Engine(tiny_model_dir("llama"), max_total_tokens=1024).core)
    yield b
    b.close()


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


def test_result_matches_engine_generate(backend, engine):
    want = engine.generate(input_ids=[5, 6, 7], sampling_params=greedy(5))
    got = backend.submit([5, 6, 7], greedy(5)).result(30)
    assert got.finished and got.output_ids == want["output_ids"]
    assert got.meta_info["finish_reason"]["type"] == "length"


def test_stream_chunks_grow_to_the_result(backend):
    chunks = list(backend.submit([9, 8, 7], greedy(4), stream=True))
    assert [len(c.new_ids) for c in chunks] == [1, 1, 1, 1]
    assert [i for c in chunks for i in c.new_ids] == chunks[-1].output_ids
    assert chunks[-1].finished and not any(c.finished for c in chunks[:-1])


def test_async_iteration_of_concurrent_requests(backend):
    async def one(i: int) -> list[int]:
        last = None
        async for chunk in backend.submit([3 + i, 4, 5], greedy(3), stream=True):
            last = chunk
        return last.output_ids

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    outs = asyncio.run(run())
    assert outs == [
        backend.submit([3 + i, 4, 5], greedy(3)).result(30).output_ids for i in range(8)
    ]


def test_cancel_aborts_and_frees_kv(backend):
    handle = backend.submit([5, 6, 7], greedy(500, ignore_eos=True), stream=True)
    it = iter(handle)
    next(it)
    handle.cancel()
    rest = list(it)
    assert rest[-1].meta_info["finish_reason"]["type"] == "abort"
    stats = backend.stats()
    assert stats["running"] == 0 and stats["kv_used_tokens"] == 0


def test_invalid_request_raises_from_iteration(backend):
    with pytest.raises(InvalidRequestError) as e:
        list(backend.submit([5, 6, 10**6], SamplingParams()))
    assert e.value.field == "input_ids"
    assert backend.submit([5], greedy(1)).result(30).finished  # still serving


def test_flush_cache_when_idle(backend):
    assert backend.flush_cache() is True
