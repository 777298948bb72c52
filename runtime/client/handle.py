"""The consumer's end of one request: chunks for threads (``for``) and asyncio (``async for``)."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from plait.runtime.client.output_stream import OutputChunk, OutputStream
from plait.runtime.errors import InvalidRequestError
from plait.runtime.messages import ReqOutput


class RequestHandle:
    """One request in flight. Iterate it (sync or ``async for``) for its chunks, or call
    ``result`` for the final one; a worker-side error is raised from either. An iteration
    left early is resumed by the next one; once the end was taken, a new one yields nothing
    (or raises the error again).

    Invariant: the last chunk delivered has ``finished`` set, or iteration raises the error that
    ended the request (``InvalidRequestError``, ``WorkerDiedError``); nothing is delivered after
    either. ``cancel`` aborts the request (its last chunk then has finish_reason "abort").
    """

    def __init__(self, rid: str, abort: Callable[[str], None]) -> None:
        self.rid = rid
        self._abort = abort
        self._cond = threading.Condition()
        self._items: collections.deque[OutputChunk | BaseException] = collections.deque()
        self._final: OutputChunk | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aqueue: asyncio.Queue | None = None
        self._in_flight = 0  # handed to the consumer's loop, not yet in its queue
        self._on_done: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._final is not None or self._error is not None

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Calls ``fn()`` once, when the final chunk or the error arrives (at once if done)."""
        with self._cond:
            if not self.done:
                self._on_done.append(fn)
                return
        fn()

    def cancel(self) -> None:
        """Aborts the request; its last chunk then has finish_reason "abort"."""
        if not self.done:
            try:
                self._abort(self.rid)
            except RuntimeError:
                pass  # the client is closed or the worker is gone: nothing left to abort

    def queued(self) -> int:
        """Chunks (or the error) delivered and not yet taken by the consumer, counting those
        handed to an ``async for`` consumer's loop that it has not queued yet; for such a
        consumer, call it on that consumer's event loop."""
        q = self._aqueue
        return q.qsize() + self._in_flight if q is not None else len(self._items)

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
                self._cond.wait_for(lambda: bool(self._items) or self.done)
                if not self._items:  # an earlier iteration took the end
                    self._raise_ended()
                    return
                item = self._items.popleft()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    async def _aiter(self) -> AsyncIterator[OutputChunk]:
        with self._cond:
            loop = asyncio.get_running_loop()
            if self._loop is not loop:  # one queue per consumer loop, taking what the last held
                held = self._aqueue
                self._loop, self._aqueue = loop, asyncio.Queue()
                while held is not None and not held.empty():
                    self._aqueue.put_nowait(held.get_nowait())
            queue = self._aqueue
            while self._items:
                queue.put_nowait(self._items.popleft())
            if self.done and queue.empty() and not self._in_flight:
                self._raise_ended()  # an earlier iteration took the end
                return
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    def _raise_ended(self) -> None:
        """A drained handle's end once more: its error, or nothing after its final chunk."""
        if self._error is not None:
            raise self._error

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._aiter()

    def _enqueue(self, item: OutputChunk | BaseException) -> None:
        """On the consumer's loop: a chunk ``_push`` handed over joins its queue."""
        assert self._aqueue is not None
        with self._cond:
            self._in_flight -= 1
            self._aqueue.put_nowait(item)

    def push(self, item: OutputChunk | BaseException) -> None:
        """Delivers the next chunk (from one producer thread) or the error that ends the
        request (from any thread: the server's deadline pushes one from its event loop); the
        first ending wins, anything after it is dropped."""
        callbacks = self._push(item)
        for fn in callbacks:
            fn()

    def _push(self, item: OutputChunk | BaseException) -> list[Callable[[], None]]:
        with self._cond:
            if self.done:
                return []
            if isinstance(item, BaseException):
                self._error = item
            elif item.finished:
                self._final = item
            if self._loop is not None and self._aqueue is not None:
                try:
                    self._loop.call_soon_threadsafe(self._enqueue, item)
                    self._in_flight += 1
                except RuntimeError:
                    pass  # the consumer's loop is closed
            else:
                self._items.append(item)
            self._cond.notify_all()
            if not self.done:
                return []
            callbacks, self._on_done = self._on_done, []
            return callbacks


def record_error(rid: str, field: str, message: str, kind: str) -> BaseException:
    """The exception a failed request's handle raises, from an ``ErrorOut`` or a record's
    ``error``: ``kind`` "invalid_request" names the field; anything else is internal."""
    if kind == "invalid_request":
        return InvalidRequestError(field, message)
    return RuntimeError(f"worker error in request {rid}: {message}")


def deliver(live: dict[str, tuple[RequestHandle, OutputStream]], out: ReqOutput) -> None:
    """Routes one record to its request: a chunk through the request's ``OutputStream``, or
    the error that ends it. A final record or an error removes the request from ``live``;
    a record for a request no longer in ``live`` (its consumer left) is dropped. A record this
    request cannot read fails it alone: the caller's thread never sees the exception."""
    entry = live.get(out.rid)
    if entry is None:
        return
    handle, stream = entry
    if out.error is not None:
        del live[out.rid]
        handle.push(record_error(out.rid, *out.error))
        return
    if out.finish_reason is not None:
        del live[out.rid]
    try:
        chunk = stream.feed(out)
    except Exception as e:  # this request fails alone; the thread delivering serves on
        live.pop(out.rid, None)
        if out.finish_reason is None:
            handle.cancel()  # its KV is freed on the worker
        handle.push(
            RuntimeError(f"request {out.rid} failed reading its output: {type(e).__name__}")
        )
        return
    handle.push(chunk)
