"""SGLang's streamed ``/generate`` events from one request's chunks (``NativeStream``): each
event's logprobs are the ones added since the previous event, and a chunk whose stream already
has a later one waiting sends nothing (the later event carries its tokens)."""

from __future__ import annotations

import asyncio
import threading

from plait.runtime.client.handle import RequestHandle
from plait.runtime.client.output_stream import OutputChunk, OutputStream
from plait.runtime.messages import ReqOutput
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.server.http_body import GenerateCall
from plait.runtime.server.sglang_native import NativeStream

PARAMS = SamplingParams.from_dict({"max_new_tokens": 4, "return_logprob": True})


def _chunks(n: int) -> list[OutputChunk]:
    """A request's chunks, one token each, as the server's output stream makes them (their
    logprob lists shared and growing, as in the server)."""
    stream = OutputStream("r", PARAMS, None, lambda t: None)
    chunks = []
    for i in range(n):
        out = ReqOutput(
            rid="r",
            start=i,
            new_ids=[10 + i],
            finish_reason={"type": "length", "length": n} if i == n - 1 else None,
            new_logprobs=[-0.5 * i],
            new_logprob_ids=[10 + i],
        )
        chunks.append(stream.feed(out))
    return chunks


def _logprob_ids(event: dict) -> list[int]:
    return [t for _, t, _ in event["meta_info"]["output_token_logprobs"]]


def test_each_event_carries_the_logprobs_added_since_the_last():
    shaper = NativeStream(GenerateCall([1, 2], PARAMS))
    events = [shaper.event(c) for c in _chunks(4)]
    assert [_logprob_ids(e) for e in events] == [[10], [11], [12], [13]]
    assert [e["meta_info"]["output_token_logprobs_length"] for e in events] == [1, 2, 3, 4]


def test_a_chunk_with_a_later_one_waiting_sends_nothing_and_the_next_event_carries_it():
    shaper = NativeStream(GenerateCall([1, 2], PARAMS))
    c = _chunks(4)
    first = shaper.event(c[0])
    assert shaper.event(c[1], behind=True) is None
    assert shaper.event(c[2], behind=True) is None
    last = shaper.event(c[3], behind=True)  # the last chunk is always sent
    assert _logprob_ids(first) == [10] and _logprob_ids(last) == [11, 12, 13]
    meta = last["meta_info"]
    assert meta["completion_tokens"] == meta["output_token_logprobs_length"] == 4
    assert last["output_ids"] == [10, 11, 12, 13]


def test_a_handle_counts_the_chunks_its_reader_has_not_taken():
    handle = RequestHandle("r", lambda rid: None)
    c = _chunks(3)
    handle.push(c[0])
    handle.push(c[1])
    assert handle.queued() == 2
    it = iter(handle)
    next(it)
    assert handle.queued() == 1


def test_an_async_reader_counts_chunks_handed_to_its_loop_and_not_yet_queued():
    """A chunk pushed from another thread reaches the reader's queue through its loop; until
    the loop runs that hand-over, ``queued`` still counts it (the stream merges it)."""
    handle = RequestHandle("r", lambda rid: None)
    c = _chunks(3)

    async def read() -> list[int]:
        it = handle.__aiter__()
        pusher = asyncio.get_running_loop().run_in_executor(None, handle.push, c[0])
        first = await it.__anext__()
        # queued by the time the executor's answer resumes this coroutine
        await asyncio.get_running_loop().run_in_executor(None, handle.push, c[1])
        # pushed while this coroutine holds the loop: handed over, not yet queued; the thread
        # then asks the loop to set ``handed`` (the loop runs what it is handed in order)
        loop, handed = asyncio.get_running_loop(), asyncio.Event()

        def push_then_mark() -> None:
            handle.push(c[2])
            loop.call_soon_threadsafe(handed.set)

        t = threading.Thread(target=push_then_mark)
        t.start()
        t.join()
        counts = [handle.queued()]
        await asyncio.wait_for(handed.wait(), 30)  # the loop has run the hand-over
        counts.append(handle.queued())
        second = await it.__anext__()
        counts.append(handle.queued())
        await pusher
        assert first.finished is False and second is c[1]
        return counts

    assert asyncio.run(read()) == [2, 2, 1]
