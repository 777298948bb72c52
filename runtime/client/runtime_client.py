"""The runtime client: submits token ids to a worker over ZMQ, detokenizes what comes back.

Thread-safe. One background I/O thread owns the DEALER socket; callers hand it messages through
a queue and wake it through a pipe. Results arrive on ``RequestHandle``s, readable from any
thread (blocking iteration, ``result``) or from an asyncio loop (``async for``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from plait.runtime import messages as m
from plait.runtime.client.detokenizer import (
    IncrementalDetokenizer,
    final_text,
    hold_back_stop_prefix,
)
from plait.runtime.client.generate_args import check_input_ids
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.sampling_params import SamplingParams

PING_INTERVAL_S = 1.0
POLL_MS = 100


@dataclass(slots=True)
class OutputChunk:
    """One update of a request. ``text`` is cumulative (partial UTF-8 and stop-string prefixes
    held back; on the final chunk, stop string / stop token cut), ``delta`` is the text added
    since the previous chunk, ``output_ids`` every token so far."""

    rid: str
    text: str
    delta: str
    output_ids: list[int]
    finished: bool
    meta_info: dict[str, Any]


class RequestHandle:
    """One request in flight. Iterate it (sync or ``async for``) for its chunks, or call
    ``result`` for the final one; a worker-side error is raised from either."""

    def __init__(self, rid: str, client: RuntimeClient) -> None:
        self.rid = rid
        self._client = client
        self._cond = threading.Condition()
        self._items: collections.deque[OutputChunk | BaseException] = collections.deque()
        self._final: OutputChunk | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aqueue: asyncio.Queue | None = None

    @property
    def done(self) -> bool:
        return self._final is not None or self._error is not None

    def cancel(self) -> None:
        """Aborts the request; its last chunk then has finish_reason "abort"."""
        if not self.done:
            try:
                self._client.abort(self.rid)
            except RuntimeError:
                pass  # the client is closed or the worker is gone: nothing left to abort

    def result(self, timeout: float | None = None) -> OutputChunk:
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"request {self.rid} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._final is not None
        return self._final

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items))
                item = self._items.popleft()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    async def _aiter(self) -> AsyncIterator[OutputChunk]:
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._aqueue = asyncio.Queue()
            while self._items:
                self._aqueue.put_nowait(self._items.popleft())
        while True:
            item = await self._aqueue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._aiter()

    def _push(self, item: OutputChunk | BaseException) -> None:
        """Called by the I/O thread only."""
        with self._cond:
            if self.done:
                return
            if isinstance(item, BaseException):
                self._error = item
            elif item.finished:
                self._final = item
            if self._loop is not None and self._aqueue is not None:
                try:
                    self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
                except RuntimeError:
                    pass  # the consumer's loop is closed
            else:
                self._items.append(item)
            self._cond.notify_all()


@dataclass(slots=True)
class _Pending:
    """Client-side state of one request: detokenizer and accumulated meta_info."""

    handle: RequestHandle
    params: SamplingParams
    detok: IncrementalDetokenizer | None
    output_ids: list[int] = field(default_factory=list)
    raw: str = ""
    sent: str = ""
    out_lp: list = field(default_factory=list)
    out_top: list = field(default_factory=list)
    in_lp: list | None = None
    in_top: list | None = None


class RuntimeClient:
    """Talks to one worker. ``submit`` validates against the worker's vocabulary and context
    (fetched with a ping at construction), then sends; ``n > 1`` needs ``submit_n``.

    When the worker dies (its process exits, or a ping gets no answer within
    ``heartbeat_timeout``) every pending handle fails with ``WorkerDiedError`` and so does every
    later call.
    """

    def __init__(
        self,
        endpoint: str,
        tokenizer: Any | None = None,
        *,
        is_alive: Callable[[], bool] | None = None,
        heartbeat_timeout: float = 3.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.tokenizer = tokenizer
        self.heartbeat_timeout = heartbeat_timeout
        self._is_alive = is_alive
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._pending: dict[str, _Pending] = {}
        self._waiters: dict[type, collections.deque[Future]] = collections.defaultdict(
            collections.deque
        )
        self._lock = threading.Lock()
        self._dead: BaseException | None = None
        self._closed = False
        self._rid_counter = itertools.count()
        self._token_text: dict[int, str] = {}
        self._thread = threading.Thread(target=self._io_loop, name="plait-client-io", daemon=True)
        self._thread.start()
        self.info: dict[str, Any] = self._call(m.PingReq(), m.Pong, connect_timeout).info

    # ---- public API -----------------------------------------------------------------------

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams | None = None,
        rid: str | None = None,
        stream: bool = False,
    ) -> RequestHandle:
        params = (sampling_params or SamplingParams()).copy()
        if params.n != 1:
            raise InvalidRequestError("n", "submit takes n == 1; use submit_n for n > 1")
        params.verify(self.info["vocab_size"])
        check_input_ids(
            list(input_ids),
            "input_ids",
            self.info["vocab_size"],
            self.info["context_len"],
            self.info["kv_total"],
        )
        rid = rid or f"c{next(self._rid_counter)}-{uuid.uuid4().hex[:12]}"
        handle = RequestHandle(rid, self)
        detok = (
            IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
            if self.tokenizer is not None
            else None
        )
        msg = m.GenerateReq(rid, list(input_ids), _params_dict(params), stream)
        self._post(("generate", msg, _Pending(handle, params, detok)))
        return handle

    def submit_n(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams | None = None,
        rid: str | None = None,
        stream: bool = False,
    ) -> list[RequestHandle]:
        """Expands ``n`` like ``Engine``: sample j has rid ``{rid}-{j}`` and seed ``seed + j``."""
        params = sampling_params or SamplingParams()
        if params.n == 1:
            return [self.submit(input_ids, params, rid, stream)]
        params.verify(self.info["vocab_size"])
        base = rid or f"c{next(self._rid_counter)}-{uuid.uuid4().hex[:12]}"
        return [
            self.submit(
                input_ids,
                params.copy(n=1, seed=None if params.seed is None else params.seed + j),
                f"{base}-{j}",
                stream,
            )
            for j in range(params.n)
        ]

    def abort(self, rid: str) -> None:
        self._post(("send", m.AbortReq(rid), None))

    def flush_cache(self, timeout: float = 10) -> bool:
        return self._call(m.FlushCacheReq(), m.FlushCacheOut, timeout).ok

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return self._call(m.StatsReq(), m.StatsOut, timeout).stats

    def shutdown_worker(self) -> None:
        """Asks the worker to exit (its pending requests are dropped)."""
        self._post(("send", m.ShutdownReq(), None))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    @property
    def dead(self) -> bool:
        return self._dead is not None

    def check_alive(self) -> None:
        """Raises WorkerDiedError once the worker is known dead."""
        if self._dead is not None:
            raise WorkerDiedError(str(self._dead))

    # ---- caller side ----------------------------------------------------------------------

    def _call(self, msg: m.Message, reply: type, timeout: float) -> Any:
        fut: Future = Future()
        self._post(("call", msg, (reply, fut)))
        done, _ = wait([fut], timeout)
        if not done:
            raise TimeoutError(f"the worker did not answer {type(msg).__name__} in {timeout} s")
        return fut.result()

    def _post(self, item: tuple) -> None:
        self.check_alive()
        if self._closed:
            raise RuntimeError("the client is closed")
        self._outbox.put(item)
        self._wake()
        if self._dead is not None or self._closed:  # the I/O thread may be gone already
            self._fail_outbox(self._dead or RuntimeError("the client was closed"))

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the I/O thread is awake already

    # ---- I/O thread -----------------------------------------------------------------------

    def _io_loop(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # never block the I/O thread on a slow or dead worker
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        ping_sent: float | None = None
        last_ping = time.monotonic()
        try:
            while not self._closed:
                events = dict(poller.poll(POLL_MS))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                self._send_outbox(sock)
                while True:
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    msg = m.decode(data)
                    if isinstance(msg, m.Pong) and ping_sent is not None:
                        ping_sent = None
                    self._dispatch(msg)
                now = time.monotonic()
                if self._pending or any(self._waiters.values()):
                    if self._is_alive is not None and not self._is_alive():
                        self._die("the worker process exited")
                        return
                    if ping_sent is not None and now - ping_sent > self.heartbeat_timeout:
                        self._die(f"the worker did not answer a ping in {self.heartbeat_timeout} s")
                        return
                    if ping_sent is None and now - last_ping > PING_INTERVAL_S:
                        sock.send(m.encode(m.PingReq()))
                        ping_sent = last_ping = now
                else:
                    ping_sent = None
        except Exception as e:  # a bug here must not leave callers hanging
            self._die(f"client I/O thread failed: {type(e).__name__}: {e}")
        finally:
            if self._dead is None:
                self._fail_pending(RuntimeError("the client was closed"))
            sock.close(0)
            ctx.term()

    def _send_outbox(self, sock: zmq.Socket) -> None:
        while True:
            try:
                kind, msg, extra = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "generate":
                self._pending[msg.rid] = extra
            elif kind == "call":
                reply, fut = extra
                # pings from the health check also answer with Pong; keep ours in order
                self._waiters[reply].append(fut)
            sock.send(m.encode(msg))

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.TokenOut):
            pending = self._pending.get(msg.rid)
            if pending is not None:
                if msg.finished:
                    del self._pending[msg.rid]
                pending.handle._push(self._chunk(pending, msg))
        elif isinstance(msg, m.ErrorOut):
            pending = self._pending.pop(msg.rid, None)
            if pending is not None:
                if msg.kind == "invalid_request":
                    err: BaseException = InvalidRequestError(msg.field, msg.message)
                else:
                    err = RuntimeError(f"worker error in request {msg.rid}: {msg.message}")
                pending.handle._push(err)
        else:
            waiters = self._waiters.get(type(msg))
            if waiters:
                waiters.popleft().set_result(msg)

    def _die(self, reason: str) -> None:
        self._dead = WorkerDiedError(f"{reason} ({self.endpoint})")
        self._fail_pending(self._dead)

    def _fail_pending(self, err: Exception) -> None:
        def fresh() -> Exception:
            return type(err)(str(err))

        for pending in self._pending.values():
            pending.handle._push(fresh())
        self._pending.clear()
        for waiters in self._waiters.values():
            while waiters:
                waiters.popleft().set_exception(fresh())
        self._fail_outbox(err)

    def _fail_outbox(self, err: Exception) -> None:
        def fresh() -> Exception:
            return type(err)(str(err))

        while True:
            try:
                kind, _msg, extra = self._outbox.get_nowait()
            except queue.Empty:
                break
            if kind == "generate":
                extra.handle._push(fresh())
            elif kind == "call":
                extra[1].set_exception(fresh())

    # ---- detokenizing ---------------------------------------------------------------------

    def _chunk(self, p: _Pending, out: m.TokenOut) -> OutputChunk:
        p.output_ids.extend(out.new_ids)
        meta = dict(out.meta_info)
        if "output_token_logprobs" in meta:
            p.out_lp.extend(self._with_text(meta["output_token_logprobs"]))
            p.out_top.extend([self._with_text(row) for row in meta["output_top_logprobs"]])
            meta["output_token_logprobs"] = list(p.out_lp)
            meta["output_top_logprobs"] = list(p.out_top)
        if "input_token_logprobs" in meta:
            p.in_lp = self._with_text(meta["input_token_logprobs"])
            p.in_top = [self._with_text(row) for row in meta["input_top_logprobs"]]
        if p.in_lp is not None:
            meta["input_token_logprobs"] = p.in_lp
            meta["input_top_logprobs"] = p.in_top
        if self.tokenizer is None:
            text = ""
        elif out.finished:
            text = final_text(
                self.tokenizer,
                p.output_ids,
                p.params.skip_special_tokens,
                meta.get("finish_reason"),
            )
        else:
            p.raw += p.detok.feed(out.new_ids)
            text = hold_back_stop_prefix(p.raw, p.params.stop)
        delta = text[len(p.sent) :] if text.startswith(p.sent) else text
        p.sent = text
        return OutputChunk(out.rid, text, delta, list(p.output_ids), out.finished, meta)

    def _with_text(self, triples: list) -> list[tuple]:
        return [(v, t, self._text_of(t)) for v, t, _ in triples]

    def _text_of(self, tid: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._token_text.get(tid)
        if text is None:
            text = self._token_text[tid] = self.tokenizer.decode([tid])
        return text


def _params_dict(p: SamplingParams) -> dict[str, Any]:
    return asdict(p)
