"""An in-process generate backend: an ``Engine`` driven by one background thread.

It has the same surface as the worker's ``RuntimeClient`` (``submit`` / ``abort`` /
``flush_cache`` / ``stats``) so the HTTP server runs on either (``plait serve --in-process``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from plait.runtime.client.detokenizer import (
    IncrementalDetokenizer,
    hold_back_stop_prefix,
    output_text,
)
from plait.runtime.client.generate_args import check_input_ids
from plait.runtime.engine import Engine, build_meta_info
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.request import Req


@dataclass(slots=True)
class OutputChunk:
    """What one request produced so far: ``text`` is cumulative (stop strings cut), ``delta``
    what it added since the previous chunk."""

    rid: str
    text: str
    delta: str
    output_ids: list[int]
    finished: bool
    meta_info: dict[str, Any] = field(default_factory=dict)


_END = object()


class RequestHandle:
    """The chunks of one request, for asyncio (``async for``) or threads (``for``).

    Invariant: the last chunk delivered has ``finished`` set, or iteration raises the error that
    ended the request (``InvalidRequestError``, ``WorkerDiedError``).
    """

    def __init__(self, rid: str, backend: EngineBackend) -> None:
        self.rid = rid
        self._backend = backend
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closed = False

    def _put(self, item: Any) -> None:
        with self._cond:
            if self._closed:
                return
            self._items.append(item)
            if item is _END or isinstance(item, BaseException) or item.finished:
                self._closed = True
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _take(self) -> Any:
        item = self._items.popleft()
        if item is _END:
            self._items.appendleft(item)
            return _END
        if isinstance(item, BaseException):
            self._items.appendleft(_END)
            raise item
        if item.finished:
            self._items.appendleft(_END)
        return item

    def __iter__(self) -> RequestHandle:
        return self

    def __next__(self) -> OutputChunk:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._take()
        if item is _END:
            raise StopIteration
        return item

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> OutputChunk:
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            with self._cond:
                if self._items:
                    item = self._take()
                    break
                self._waiters.append((loop, event))
            await event.wait()
        if item is _END:
            raise StopAsyncIteration
        return item

    def result(self, timeout: float | None = None) -> OutputChunk:
        last = None
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed, timeout):
                raise TimeoutError(f"request {self.rid} did not finish in {timeout} s")
        for chunk in self:
            last = chunk
        assert last is not None
        return last

    def cancel(self) -> None:
        if not self._closed:
            self._backend.abort(self.rid)


@dataclass(slots=True)
class _Live:
    req: Req
    handle: RequestHandle
    detok: IncrementalDetokenizer | None
    raw: str = ""
    sent: str = ""
    seen: int = 0


class EngineBackend:
    """Runs ``engine.scheduler.step()`` on one thread; every other method is thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.vocab_size = engine.vocab_size
        self.context_len = engine.context_len
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._generation_tokens = 0
        self._dead: BaseException | None = None
        self._stopped = False
        self._token_text = lru_cache(maxsize=65536)(self._decode_one)
        self._thread = threading.Thread(target=self._loop, name="plait-engine", daemon=True)
        self._thread.start()

    # ---- client surface ---------------------------------------------------------------------

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams,
        rid: str | None = None,
        stream: bool = False,
    ) -> RequestHandle:
        rid = rid or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        handle = RequestHandle(rid, self)
        if self._dead is not None:
            handle._put(WorkerDiedError(f"engine thread died: {self._dead}"))
            return handle
        try:
            sampling_params.verify(self.vocab_size)
            check_input_ids(
                input_ids,
                "input_ids",
                self.vocab_size,
                self.context_len,
                self.engine.loaded.kv.total_size(),
            )
        except InvalidRequestError as e:
            handle._put(e)
            return handle
        req = Req(
            rid=rid, input_ids=list(input_ids), sampling_params=sampling_params, stream=stream
        )
        self._inbox.put(("submit", (req, handle)))
        return handle

    def abort(self, rid: str) -> None:
        self._inbox.put(("abort", rid))

    def flush_cache(self, timeout: float = 10) -> bool:
        return self._call("flush", timeout)

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return self._call("stats", timeout)

    def close(self) -> None:
        self._stopped = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=10)

    def _call(self, kind: str, timeout: float) -> Any:
        if self._dead is not None:
            raise WorkerDiedError(f"engine thread died: {self._dead}")
        fut: Future[Any] = Future()
        self._inbox.put((kind, fut))
        return fut.result(timeout)

    # ---- engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        sched = self.engine.scheduler
        try:
            while not self._stopped:
                busy = not sched.is_idle() or bool(sched.aborted)
                self._drain(block=not busy)
                if not sched.is_idle() or sched.aborted:
                    for req in sched.step():
                        self._deliver(req)
        except BaseException as e:  # the engine is gone: fail every pending request now
            self._dead = e
            for live in self._live.values():
                live.handle._put(WorkerDiedError(f"engine thread died: {e!r}"))
            self._live.clear()
            while True:
                try:
                    kind, arg = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if kind == "submit":
                    arg[1]._put(WorkerDiedError(f"engine thread died: {e!r}"))
                elif isinstance(arg, Future):
                    arg.set_exception(WorkerDiedError(f"engine thread died: {e!r}"))
            raise

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, arg: Any) -> None:
        sched = self.engine.scheduler
        if kind == "submit":
            req, handle = arg
            if req.rid in self._live:
                handle._put(InvalidRequestError("rid", f"{req.rid!r} is already running"))
                return
            tok = self.tokenizer
            skip = req.sampling_params.skip_special_tokens
            detok = IncrementalDetokenizer(tok, skip) if tok is not None else None
            self._live[req.rid] = _Live(req, handle, detok)
            sched.add_request(req)
        elif kind == "abort":
            # an aborted request comes back from the next step with finish_reason "abort"
            if arg in self._live and not sched.abort(arg):
                self._live.pop(arg).handle._put(_END)
        elif kind == "flush":
            arg.set_result(sched.flush_cache())
        elif kind == "stats":
            arg.set_result(self._stats())
        elif kind == "stop":
            self._stopped = True

    def _stats(self) -> dict[str, Any]:
        sched = self.engine.scheduler
        kv = self.engine.loaded.kv
        total = kv.total_size()
        used = total - kv.available_size() - kv.evictable_size()
        running = len(sched.running) + (1 if sched.chunked_req is not None else 0)
        return {
            "running": running,
            "queued": len(sched.waiting),
            "kv_used_tokens": used,
            "kv_total_tokens": total,
            "kv_usage": used / total if total else 0.0,
            "cache_hit_rate": self._cached_tokens / max(self._prompt_tokens, 1),
            "prompt_tokens": self._prompt_tokens,
            "cached_tokens": self._cached_tokens,
            "generation_tokens": self._generation_tokens,
        }

    def _deliver(self, req: Req) -> None:
        live = self._live.get(req.rid)
        if live is None or live.req is not req:
            return
        if req.error is not None:  # failed alone (e.g. its grammar did not compile)
            del self._live[req.rid]
            live.handle._put(req.error)
            return
        new_ids = req.output_ids[live.seen :]
        live.seen = len(req.output_ids)
        if req.finished:
            del self._live[req.rid]
            self._prompt_tokens += len(req.input_ids)
            self._cached_tokens += req.cached_tokens
            self._generation_tokens += len(req.output_ids)
            text = output_text(self.tokenizer, req) if self.tokenizer is not None else ""
        elif not req.stream:
            return
        else:
            if live.detok is not None:
                live.raw += live.detok.feed(new_ids)
            text = hold_back_stop_prefix(live.raw, req.sampling_params.stop)
        delta = text[len(live.sent) :] if text.startswith(live.sent) else text
        live.sent = text
        meta = build_meta_info(req, self._token_text if self.tokenizer is not None else None)
        chunk = OutputChunk(req.rid, text, delta, list(req.output_ids), req.finished, meta)
        live.handle._put(chunk)

    def _decode_one(self, tid: int) -> str:
        return self.tokenizer.decode([tid])
