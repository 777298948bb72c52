"""What every route shares: the model side's interface, submitting a request's sequences, reading
their chunks (first, final, merged as they come), and turning errors and events into HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse

from plait.runtime.client.generate_args import check_unique_rids, expand_n
from plait.runtime.limits import ModelLimits
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import INT64_MAX, SamplingParams
from plait.runtime.server.admission import AdmissionGate, HttpLimits
from plait.runtime.server.http_body import GenerateCall
from plait.runtime.server.json_body import check_declared_size, parse_body, read_limited
from plait.runtime.server.metrics import RequestTimer, ServerMetrics


class GenerateBackend(Protocol):
    """What the server needs from the model side: ``RuntimeClient`` (a worker process over ZMQ)
    or ``EngineThread`` (an engine on a thread of this process).

    ``submit`` never blocks on generation; the handle yields ``OutputChunk``s (cumulative text)
    under ``async for``, the last one ``finished``, or raises ``InvalidRequestError`` /
    ``WorkerDiedError``; ``handle.cancel()`` aborts the request and frees its KV.
    ``flush_cache`` and ``stats`` block for at most ``timeout`` seconds; ``flush_cache`` with
    a ``tenant`` under tenant isolation (``info["cache_isolation"]``) drops only what that
    tenant cached, and always succeeds.
    """

    info: dict[str, Any]  # vocab_size, context_len, kv_total, model_path

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams,
        rid: str | None = None,
        stream: bool = False,
        scope: RequestScope = RequestScope(),
    ) -> Any: ...

    def abort(self, rid: str) -> None: ...

    def flush_cache(self, timeout: float = 10, tenant: str | None = None) -> bool: ...

    def stats(self, timeout: float = 10) -> dict[str, Any]: ...


@dataclass(slots=True)
class ServerState:
    backend: GenerateBackend
    limits: ModelLimits
    model_name: str
    served_names: set[str]
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    http: HttpLimits = field(default_factory=HttpLimits)
    gate: AdmissionGate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = AdmissionGate(self.http)


# ---- running requests ------------------------------------------------------------------------


class Stream:
    """One submitted choice: its handle, iterated with timing, cancelled past its deadline
    (``request_timeout``: a TimeoutError ends it).

    The deadline is one timer on the event loop for the whole stream, armed at the first
    ``next`` and disarmed by the last chunk or ``close``: per chunk, ``asyncio.wait_for`` made
    a task and a timer (a served stream's every token)."""

    def __init__(
        self, handle: Any, metrics: ServerMetrics, timeout: float | None, tenant: str | None
    ) -> None:
        self.handle = handle
        self.timer = RequestTimer(metrics, tenant)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._it = handle.__aiter__()
        self._expiry: asyncio.TimerHandle | None = None
        self.last: Any = None

    async def next(self) -> Any:
        if self.deadline is not None and self._expiry is None:
            left = max(self.deadline - time.monotonic(), 0.0)
            self._expiry = asyncio.get_running_loop().call_later(left, self._expire)
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            self.close()
            return None
        except BaseException:
            self.close()
            raise
        self.timer.on_chunk(chunk.output_ids, chunk.finished, chunk.meta_info)
        self.last = chunk
        if chunk.finished:
            self.close()
        return chunk

    def behind(self) -> bool:
        """A later chunk (or the error) of this stream already waits to be read."""
        return self.handle.queued() > 0

    def _expire(self) -> None:
        """The deadline passed: the worker drops the request, its reader gets the error."""
        self.handle.cancel()  # (before the error: a finished handle aborts nothing)
        self.handle.push(
            TimeoutError(f"the request ran past the request timeout ({self.timeout} s)")
        )

    def close(self) -> None:
        """Disarms the deadline (the stream ended, or its reader left)."""
        if self._expiry is not None:
            self._expiry.cancel()


def key_tenant(request: Request) -> str | None:
    """The caller's tenant: its API key's name (set by ``AuthMiddleware``), None without keys."""
    return getattr(request.state, "plait_tenant", None)


# A non-streamed request's records: its first token (the time to first token, an early error)
# and its end; none between (each would cost the server a record to decode, detokenize and
# hand to the event loop, for a response nobody reads until the end).
RECORDS_FIRST_AND_LAST = INT64_MAX


def submit_calls(
    state: ServerState,
    calls: list[GenerateCall],
    scope: RequestScope = RequestScope(),
    *,
    stream: bool,
) -> list[Stream]:
    """Submits ``n`` requests per call (``expand_n``: seed + j for choice j), in order, in
    the caller's ``scope``, once the request fits the per-request fan-out (400) and the
    server's load limits (429). Not ``stream``: the worker sends each request's first and
    last record only (``RECORDS_FIRST_AND_LAST``)."""
    gate = state.gate
    gate.check_fan_out(sum(call.n for call in calls))
    records = {} if stream else {"stream_interval": RECORDS_FIRST_AND_LAST}
    subs = [
        sub
        for call in calls
        for sub in expand_n(
            call.rid, call.input_ids, call.sampling_params.copy(n=call.n, **records), scope
        )
    ]
    check_unique_rids(subs)
    streams: list[Stream] = []
    try:
        for sub in subs:
            tokens = len(sub.input_ids)
            gate.admit(1, tokens)
            try:
                handle = state.backend.submit(
                    sub.input_ids, sub.params, rid=sub.rid, stream=True, scope=scope
                )
            except BaseException:
                gate.release(1, tokens)
                raise
            handle.add_done_callback(lambda t=tokens: gate.release(1, t))
            timeout = state.http.request_timeout
            streams.append(Stream(handle, state.metrics, timeout, scope.tenant))
    except BaseException:
        cancel_all(streams)
        raise
    return streams


def cancel_all(streams: list[Stream]) -> None:
    for s in streams:
        s.close()
        s.handle.cancel()


async def first_chunks(streams: list[Stream]) -> list[Any]:
    """Waits for every stream's first chunk, so an invalid request fails before any response
    is sent."""
    try:
        return list(await asyncio.gather(*(s.next() for s in streams)))
    except BaseException:
        cancel_all(streams)
        raise


async def final_chunks(request: Request, streams: list[Stream]) -> list[Any] | None:
    """Each stream's last chunk; None (and every stream aborted) if the client goes away
    first."""
    firsts = await first_chunks(streams)

    async def finish(s: Stream, chunk: Any) -> Any:
        while chunk is not None and not chunk.finished:
            chunk = await s.next()
        return s.last

    task = asyncio.ensure_future(asyncio.gather(*(finish(s, c) for s, c in zip(streams, firsts))))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            cancel_all(streams)


async def merged_chunks(streams: list[Stream], firsts: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """Yields ``(stream index, chunk)`` as chunks arrive, the first chunks first; an error of
    one stream comes as the chunk (an exception instance). One stream (most requests) is read
    directly; several through a queue their pump tasks fill."""
    if len(streams) == 1:
        async for item in _one_stream(streams[0], firsts[0]):
            yield item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            while (chunk := await streams[i].next()) is not None:
                await queue.put((i, chunk))
                if chunk.finished:
                    break
        except Exception as e:
            await queue.put((i, e))
        finally:
            await queue.put((i, None))

    pumps = []
    for i, chunk in enumerate(firsts):
        if chunk is not None:
            yield i, chunk
        if chunk is not None and not chunk.finished:
            pumps.append(asyncio.ensure_future(pump(i)))
    try:
        remaining = len(pumps)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield i, item
    finally:
        for p in pumps:
            p.cancel()
        cancel_all(streams)


async def _one_stream(stream: Stream, first: Any) -> AsyncIterator[tuple[int, Any]]:
    """``merged_chunks`` of one stream."""
    chunk = first
    try:
        if chunk is not None:
            yield 0, chunk
        while chunk is not None and not chunk.finished:
            try:
                chunk = await stream.next()
            except Exception as e:
                yield 0, e
                return
            if chunk is not None:
                yield 0, chunk
    finally:
        cancel_all([stream])


# Characters JSON leaves raw (ensure_ascii=False) that line readers split on: httpx's
# aiter_lines uses str.splitlines (U+0085, U+2028, U+2029), which cut an event in two. Inside a
# JSON string their escapes decode to the same text.
_SSE_ESCAPES = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(payload: Any) -> str:
    """One server-sent event: a single line of JSON, whatever text the model wrote."""
    return f"data: {json.dumps(payload, ensure_ascii=False).translate(_SSE_ESCAPES)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, within the server's size and nesting limits (413 / 400),
    read in chunks and parsed off the event loop."""
    limits: HttpLimits = request.app.state.plait.http
    check_declared_size(request.headers.get("content-length"), limits.max_request_bytes)
    raw = await read_limited(request.stream(), limits.max_request_bytes)
    return await asyncio.to_thread(parse_body, raw, limits.max_json_depth)


def streaming_response(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
