"""A worker process that comes back: one supervisor thread starts it, watches it, and replaces it
when it dies, backing off when it keeps dying. The server and ``Runtime`` generate through it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plait.runtime.client.handle import RequestHandle
from plait.runtime.client.runtime_client import RuntimeClient
from plait.runtime.config import EngineConfig
from plait.runtime.errors import WorkerDiedError
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.tokenizer import import_tokenizer_library, load_tokenizer
from plait.runtime.worker.process import WorkerProcess, start_worker

_WATCH_S = 0.1  # how often the supervisor looks at a live worker (its heartbeat verdict)


@dataclass(slots=True, frozen=True)
class RestartPolicy:
    """A dead worker is replaced at once the first time, then after ``min(base_s * 2**(k-2),
    cap_s)`` seconds, where ``k`` counts the deaths in a row of workers that lived less than
    ``stable_s`` (a crash loop); ``restart=False`` leaves it dead."""

    restart: bool = True
    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 30.0

    def delay(self, quick_deaths: int) -> float:
        if quick_deaths <= 1:
            return 0.0
        return min(self.base_s * 2 ** (quick_deaths - 2), self.cap_s)


class SupervisedWorker:
    """The surface of ``RuntimeClient`` (``info`` / ``submit`` / ``abort`` / ``flush_cache`` /
    ``stats``) over a worker that is restarted when it dies.

    Invariants: ``status`` is "ready" while a live worker serves, "restarting" from its death
    until its replacement answers, "dead" (``restart=False``) or "stopped" after ``close``.
    When a worker dies every request it held fails with ``WorkerDiedError`` at once; a call
    made while no worker serves raises ``WorkerDiedError`` (HTTP 503, ``Retry-After``).
    Every worker is started from the supervisor thread, which outlives it, so the kernel's
    parent-death signal (the worker's guard against an orphaned life) fires only when this
    process goes.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        heartbeat_timeout: float = 60.0,
        policy: RestartPolicy | None = None,
        start_timeout: float = 300.0,
        while_loading: Callable[[], object] | None = None,
    ) -> None:
        """Returns once the first worker serves (or raises why it could not start).
        ``while_loading`` runs on the supervisor thread while that first worker loads its
        model, after the tokenizer library's import (both overlap the load; neither runs
        again for a replacement worker)."""
        self.config = config
        self._while_loading = while_loading
        self.policy = policy or RestartPolicy()
        self.heartbeat_timeout = heartbeat_timeout
        self.start_timeout = start_timeout
        self.status = "starting"
        self.restarts = 0
        self.last_restart_s: float | None = None  # death noticed -> replacement ready
        self.tokenizer: Any | None = None
        self.info: dict[str, Any] = {}
        self._worker: WorkerProcess | None = None
        self._client: RuntimeClient | None = None
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._supervise, name="plait-supervisor", daemon=True
        )
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self.status != "starting")
        if self._start_error is not None:
            raise self._start_error

    # ---- client surface -------------------------------------------------------------------

    @property
    def client(self) -> RuntimeClient:
        client = self._client
        if client is None:
            raise WorkerDiedError(f"the model worker is {self.status}")
        return client

    @property
    def worker(self) -> WorkerProcess | None:
        return self._worker

    def submit(
        self,
        input_ids: list[int],
        sampling_params: SamplingParams,
        rid: str | None = None,
        stream: bool = False,
        scope: RequestScope = RequestScope(),
    ) -> RequestHandle:
        return self.client.submit(input_ids, sampling_params, rid, stream, scope)

    def abort(self, rid: str) -> None:
        client = self._client
        if client is not None:
            client.abort(rid)

    def flush_cache(self, timeout: float = 10, tenant: str | None = None) -> bool:
        return self.client.flush_cache(timeout, tenant)

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return self.client.stats(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Blocks until a worker serves (True) or ``timeout`` passes or none ever will."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.status in ("ready", "dead", "stopped"), timeout
            ) and (self.status == "ready")

    def close(self) -> None:
        """Stops the worker (asked first, killed if it does not go) and the supervisor."""
        self._closing.set()
        client, worker = self._client, self._worker
        if client is not None and worker is not None and worker.is_alive() and not client.dead:
            try:
                client.shutdown_worker()
            except (WorkerDiedError, RuntimeError):
                pass
        self._thread.join(timeout=15)

    # ---- supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        quick_deaths = 0
        died_at: float | None = None
        try:
            while not self._closing.is_set():
                try:
                    worker, client = self._start()
                except Exception as e:
                    if self.info == {}:  # the first start failed: the constructor raises it
                        self._start_error = e
                        self._set_status("dead")
                        return
                    quick_deaths += 1
                    self._closing.wait(self.policy.delay(quick_deaths))
                    continue
                started = time.monotonic()
                if died_at is not None:
                    self.last_restart_s = started - died_at
                with self._cond:
                    self._worker, self._client = worker, client
                self._set_status("ready")
                reason = self._watch(worker, client)
                died_at = time.monotonic()
                with self._cond:
                    self._client = None
                    if not self._closing.is_set():
                        self.status = "restarting" if self.policy.restart else "dead"
                        self.restarts += self.policy.restart
                    self._cond.notify_all()
                client.close(WorkerDiedError(reason))  # its pending requests fail now
                worker.stop(timeout=2.0)
                if self._closing.is_set() or not self.policy.restart:
                    return
                lived = died_at - started
                quick_deaths = 0 if lived >= self.policy.stable_s else quick_deaths + 1
                self._closing.wait(self.policy.delay(quick_deaths))
        finally:
            if self._closing.is_set():
                self._set_status("stopped")

    def _start(self) -> tuple[WorkerProcess, RuntimeClient]:
        first = not self.info
        worker = start_worker(
            config=self.config,
            start_timeout=self.start_timeout,
            while_loading=self._first_load_work if first else None,
        )
        try:
            if first:
                self.tokenizer = load_tokenizer(worker.info["model_path"])
            client = RuntimeClient(
                worker.endpoint,
                self.tokenizer,
                is_alive=worker.is_alive,
                heartbeat_timeout=self.heartbeat_timeout,
            )
        except BaseException:
            worker.stop(timeout=2.0)
            raise
        self.info = client.info
        return worker, client

    def _first_load_work(self) -> None:
        import_tokenizer_library()
        if self._while_loading is not None:
            self._while_loading()

    def _watch(self, worker: WorkerProcess, client: RuntimeClient) -> str:
        """Returns why the worker stopped serving: its exit, a missed heartbeat, or close."""
        while not self._closing.is_set():
            try:
                code = worker.proc.wait(timeout=_WATCH_S)
            except subprocess.TimeoutExpired:
                if client.dead:
                    return "the model worker stopped answering; restarting it"
                continue
            return f"the model worker exited (code {code}); restarting it"
        return "the server is shutting down"

    def _set_status(self, status: str) -> None:
        with self._cond:
            self.status = status
            self._cond.notify_all()
