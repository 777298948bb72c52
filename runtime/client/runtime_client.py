"""The runtime client: submits token ids to a worker over ZMQ, detokenizes what comes back.

Thread-safe. One background I/O thread owns the DEALER socket; callers hand it messages through
a queue and wake it through a pipe. The worker's records go through one ``OutputStream`` per
request and arrive on ``RequestHandle``s, readable from any thread (blocking iteration,
``result``) or from an asyncio loop (``async for``).
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import asdict
from typing import Any

import zmq

from plait.runtime import messages as m
from plait.runtime.client.handle import RequestHandle, deliver, record_error
from plait.runtime.client.output_stream import OutputStream, TokenTextCache
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams

PING_INTERVAL_S = 1.0
POLL_MS = 100


class RuntimeClient:
    """Talks to one worker. ``info`` (vocabulary, context, pool size; from a ping at
    construction) lets callers validate up front; ``submit`` sends an already-validated request
    (``n == 1``: callers expand ``n`` with ``expand_n``).

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
        self._pending: dict[str, tuple[RequestHandle, OutputStream]] = {}
        self._waiters: dict[type, collections.deque[Future]] = collections.defaultdict(
            collections.deque
        )
        self._lock = threading.Lock()
        self._dead: BaseException | None = None
        self._closed = False
        self._close_error: Exception | None = None
        self._rid_counter = itertools.count()
        self._token_text = TokenTextCache(tokenizer)
        self._thread = threading.Thread(target=self._io_loop, name="plait-client-io", daemon=True)
        self._thread.start()
        self.info: dict[str, Any] = self._call(m.PingReq(), m.Pong, connect_timeout).info

    # ---- public API -----------------------------------------------------------------------

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams,
        rid: str | None = None,
        stream: bool = False,
        scope: RequestScope = RequestScope(),
    ) -> RequestHandle:
        """Sends one request whose ``sampling_params`` (n == 1) and ids the caller verified;
        the worker checks them, and the ``scope``, again at its socket."""
        if sampling_params.n != 1:
            raise InvalidRequestError("n", "submit takes n == 1; expand n with expand_n")
        rid = rid or f"c{next(self._rid_counter)}-{uuid.uuid4().hex[:12]}"
        handle = RequestHandle(rid, self.abort)
        out = OutputStream(rid, sampling_params, self.tokenizer, self._token_text)
        params = asdict(sampling_params)
        msg = m.GenerateReq(
            rid, list(input_ids), params, stream, scope.priority, scope.tenant, scope.cache_salt
        )
        self._post(("generate", msg, (handle, out)))
        return handle

    def abort(self, rid: str) -> None:
        self._post(("send", m.AbortReq(rid), None))

    def flush_cache(self, timeout: float = 10, tenant: str | None = None) -> bool:
        """Every cached prefix, or with ``tenant`` under tenant isolation that tenant's."""
        return self._call(m.FlushCacheReq(tenant), m.FlushCacheOut, timeout).ok

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return self._call(m.StatsReq(), m.StatsOut, timeout).stats

    def shutdown_worker(self) -> None:
        """Asks the worker to exit (its pending requests are dropped)."""
        self._post(("send", m.ShutdownReq(), None))

    def close(self, error: Exception | None = None) -> None:
        """Stops the I/O thread; pending requests fail with ``error`` (default: "the client
        was closed")."""
        if self._closed:
            return
        self._close_error = error
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
            self._fail_outbox(
                self._dead or self._close_error or RuntimeError("the client was closed")
            )

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
        last_ping = alive_checked = time.monotonic()
        try:
            while not self._closed:
                events = dict(poller.poll(POLL_MS))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                self._send_outbox(sock)
                # read while the socket says a frame waits (a failed recv raises, per wake-up)
                while sock.get(zmq.EVENTS) & zmq.POLLIN:
                    data = sock.recv(zmq.NOBLOCK)
                    try:
                        msg = m.decode(data)
                    except m.MessageError as e:  # a frame we cannot read names no request
                        print(f"plait client: dropped a bad frame: {e}", file=sys.stderr)
                        continue
                    if isinstance(msg, m.Pong) and ping_sent is not None:
                        ping_sent = None
                    self._dispatch(msg)
                now = time.monotonic()
                if self._pending or any(self._waiters.values()):
                    # the process's exit, looked at once a poll interval (not every chunk)
                    if now - alive_checked >= POLL_MS / 1000:
                        alive_checked = now
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
                self._fail_pending(self._close_error or RuntimeError("the client was closed"))
            sock.close(0)
            ctx.term()

    def _send_outbox(self, sock: zmq.Socket) -> None:
        while True:
            try:
                kind, msg, extra = self._outbox.get_nowait()
            except queue.Empty:
                return
            try:
                data = m.encode(msg)
            except Exception as e:  # one unencodable request fails alone; the thread serves on
                self._fail_item(kind, extra, InvalidRequestError("request", _unencodable(e)))
                continue
            if kind == "generate":
                if msg.rid in self._pending:  # a second request must never orphan the first
                    err = InvalidRequestError("rid", f"{msg.rid!r} is already in flight")
                    self._fail_item(kind, extra, err)
                    continue
                self._pending[msg.rid] = extra
            elif kind == "call":
                reply, fut = extra
                # pings from the health check also answer with Pong; keep ours in order
                self._waiters[reply].append(fut)
            sock.send(data)

    @staticmethod
    def _fail_item(kind: str, extra: Any, err: Exception) -> None:
        if kind == "generate":
            extra[0].push(err)
        elif kind == "call":
            extra[1].set_exception(err)

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.BatchOut):
            for out in msg.outputs:
                deliver(self._pending, out)
        elif isinstance(msg, m.ErrorOut):
            entry = self._pending.pop(msg.rid, None)
            if entry is not None:
                entry[0].push(record_error(msg.rid, msg.field, msg.message, msg.kind))
        else:
            waiters = self._waiters.get(type(msg))
            if waiters:
                waiters.popleft().set_result(msg)

    def _die(self, reason: str) -> None:
        # the endpoint (a socket path) stays out: this message reaches HTTP clients
        self._dead = WorkerDiedError(reason)
        self._fail_pending(self._dead)

    def _fail_pending(self, err: Exception) -> None:
        def fresh() -> Exception:
            return type(err)(str(err))

        for handle, _ in self._pending.values():
            handle.push(fresh())
        self._pending.clear()
        for waiters in self._waiters.values():
            while waiters:
                waiters.popleft().set_exception(fresh())
        self._fail_outbox(err)

    def _fail_outbox(self, err: Exception) -> None:
        while True:
            try:
                kind, _msg, extra = self._outbox.get_nowait()
            except queue.Empty:
                break
            self._fail_item(kind, extra, type(err)(str(err)))


def _unencodable(e: Exception) -> str:
    """Why a request could not cross the socket, without the message's contents."""
    if isinstance(e, OverflowError):
        return "an integer does not fit in 64 bits"
    if isinstance(e, UnicodeEncodeError):
        return "a string is not valid Unicode (a lone UTF-16 surrogate)"
    return f"cannot be sent to the worker ({type(e).__name__})"
