"""The server's in-process model side: an ``EngineCore`` stepped by one background thread.

It has the surface of the worker's ``RuntimeClient`` (``info`` / ``submit`` / ``abort`` /
``flush_cache`` / ``stats``), so the HTTP server runs on either (``plait serve --in-process``).
"""

from __future__ import annotations

import itertools
import queue
import threading
import uuid
from concurrent.futures import Future
from typing import Any

from plait.runtime.client.handle import RequestHandle, deliver
from plait.runtime.client.output_stream import OutputStream, TokenTextCache
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.limits import check_request
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore


class EngineThread:
    """Runs ``core.step()`` on one thread; every other method is thread-safe.

    Invariants: each submitted request's handle gets chunks until one final chunk or one
    error; if the thread dies every pending handle and every later call fails with
    ``WorkerDiedError``.
    """

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.tokenizer = core.tokenizer
        self.info: dict[str, Any] = core.info()
        self.limits = core.limits
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._live: dict[str, tuple[RequestHandle, OutputStream]] = {}
        self._ids = itertools.count()
        self._token_text = TokenTextCache(core.tokenizer)
        self._dead: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="plait-engine", daemon=True)
        self._thread.start()

    # ---- client surface -------------------------------------------------------------------

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams,
        rid: str | None = None,
        stream: bool = False,
        scope: RequestScope = RequestScope(),
    ) -> RequestHandle:
        """Sends one verified request (``n == 1``); the core checks it again on admission."""
        rid = rid or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        handle = RequestHandle(rid, self.abort)
        if self._dead is not None:
            handle.push(WorkerDiedError(f"engine thread died: {self._dead}"))
            return handle
        try:
            check_request(sampling_params, input_ids, "input_ids", self.limits)
        except InvalidRequestError as e:
            handle.push(e)
            return handle
        out = OutputStream(rid, sampling_params, self.tokenizer, self._token_text)
        req = (rid, list(input_ids), sampling_params, stream, scope)
        self._inbox.put(("submit", (req, handle, out)))
        return handle

    def abort(self, rid: str) -> None:
        self._inbox.put(("abort", rid))

    def flush_cache(self, timeout: float = 10, tenant: str | None = None) -> bool:
        return self._call("flush", timeout, tenant)

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return self._call("stats", timeout)

    def close(self) -> None:
        self._stopped = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=10)
        self.core.shutdown()  # its grammar compile processes

    def _call(self, kind: str, timeout: float, arg: Any = None) -> Any:
        if self._dead is not None:
            raise WorkerDiedError(f"engine thread died: {self._dead}")
        fut: Future[Any] = Future()
        self._inbox.put((kind, (fut, arg)))
        return fut.result(timeout)

    # ---- engine thread --------------------------------------------------------------------

    def _pending(self) -> bool:
        """A submit, abort or call waits in the inbox."""
        return not self._inbox.empty()

    def _loop(self) -> None:
        try:
            while not self._stopped:
                self._drain(block=not self.core.has_work)
                if self.core.has_work:
                    try:
                        outputs = self.core.step(self._pending)
                    except Exception as e:  # the batch's requests fail; the engine serves on
                        outputs = self.core.fail_all(f"{type(e).__name__}: {e}")
                    for out in outputs:
                        deliver(self._live, out)
        except BaseException as e:  # the engine is gone: fail every pending request now
            self._dead = e
            self._fail_everything(WorkerDiedError(f"engine thread died: {e!r}"))
            raise

    def _fail_everything(self, err: WorkerDiedError) -> None:
        for handle, _ in self._live.values():
            handle.push(WorkerDiedError(str(err)))
        self._live.clear()
        while True:
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                arg[1].push(WorkerDiedError(str(err)))
            elif isinstance(arg, Future):
                arg.set_exception(WorkerDiedError(str(err)))

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self._handle(*item)
            except Exception as e:  # one message fails alone; the engine thread serves on
                self._fail_item(*item, RuntimeError(f"internal error: {type(e).__name__}"))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _fail_item(kind: str, arg: Any, err: Exception) -> None:
        if kind == "submit":
            arg[4].push(err)
        elif isinstance(arg, Future) and not arg.done():
            arg.set_exception(err)

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "submit":
            req, handle, out = arg
            rid = req[0]
            try:
                self.core.add_request(*req)
            except InvalidRequestError as e:
                handle.push(e)
                return
            self._live[rid] = (handle, out)
        elif kind == "abort":
            self.core.abort(arg)  # the next step reports it with finish_reason "abort"
        elif kind == "flush":
            fut, tenant = arg
            fut.set_result(self.core.flush_cache(tenant))
        elif kind == "stats":
            arg[0].set_result(self.core.stats())
        elif kind == "stop":
            self._stopped = True
