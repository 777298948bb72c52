"""The worker process: one Engine behind a ZMQ ROUTER socket, batching every client's requests.

Run as ``python -m plait.runtime.worker --endpoint ipc:///tmp/x.sock [--model PATH]
[--options '{"max_total_tokens": 4096}']``, or start it with ``start_worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from plait.runtime import messages as m
from plait.runtime.engine import Engine, build_meta_info
from plait.runtime.errors import InvalidRequestError
from plait.runtime.worker.request import Req

# How long an idle worker blocks in poll before it checks its parent and signals again.
IDLE_POLL_MS = 50


@dataclass(slots=True)
class _Live:
    identity: bytes
    req: Req
    sent: int = 0  # output ids already sent
    counted: int = 0  # output ids already in the generation counter
    sent_input_logprobs: bool = False


@dataclass(slots=True)
class WorkerStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Serves one Engine to any number of DEALER clients.

    Invariants: a message that fails to decode or validate is answered with ``ErrorOut`` and
    changes nothing; every admitted request is answered exactly once with a finished
    ``TokenOut`` or an ``ErrorOut`` (unless its client is gone); the loop never blocks while the
    scheduler has work.
    """

    def __init__(self, engine: Engine, endpoint: str, parent_pid: int | None = None) -> None:
        self.engine = engine
        self.scheduler = engine.scheduler
        self.endpoint = endpoint
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # a slow client costs memory, never lost outputs
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(endpoint)
        self.live: dict[str, _Live] = {}
        self.stats = WorkerStats()
        self.stopping = False

    # ---- loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    break
                self._drain()
                if self.stopping:
                    break
                if not self.scheduler.is_idle() or self.scheduler.aborted:
                    self._step()
                else:
                    self.sock.poll(IDLE_POLL_MS)
        finally:
            self.sock.close(0)
            self.ctx.term()

    def _drain(self) -> None:
        while True:
            try:
                identity, data = self._recv()
            except zmq.Again:
                return
            if identity is None:
                continue
            try:
                msg = m.decode(data)
            except m.MessageError as e:
                self._send(identity, m.ErrorOut("", "message", str(e), "invalid_request"))
                continue
            self._handle(identity, msg)

    def _recv(self) -> tuple[bytes | None, bytes]:
        frames = self.sock.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 2:
            return None, b""
        return frames[0], frames[1]

    def _handle(self, identity: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.GenerateReq):
            self._add(identity, msg)
        elif isinstance(msg, m.AbortReq):
            self.scheduler.abort(msg.rid)
        elif isinstance(msg, m.PingReq):
            self._send(identity, m.Pong(self._info()))
        elif isinstance(msg, m.StatsReq):
            self._send(identity, m.StatsOut(self._stats()))
        elif isinstance(msg, m.FlushCacheReq):
            self._send(identity, m.FlushCacheOut(self.engine.flush_cache()))
        elif isinstance(msg, m.ShutdownReq):
            self.stopping = True
        else:
            kind = type(msg).__name__
            self._send(
                identity, m.ErrorOut("", "message", f"{kind} is not a request", "invalid_request")
            )

    def _add(self, identity: bytes, msg: m.GenerateReq) -> None:
        try:
            if msg.rid in self.live:
                raise InvalidRequestError("rid", f"{msg.rid!r} is already running")
            _, reqs = self.engine.make_requests(
                None, msg.sampling_params, msg.input_ids, None, None, None, msg.rid, msg.stream
            )
            if len(reqs) != 1:
                raise InvalidRequestError("n", "the worker takes n == 1; the client expands n")
        except InvalidRequestError as e:
            self._send(identity, m.ErrorOut(msg.rid, e.field, e.message, "invalid_request"))
            return
        except Exception as e:  # a malformed field the validators did not foresee
            self._send(identity, m.ErrorOut(msg.rid, "", _describe(e), "internal"))
            return
        req = reqs[0]
        self.live[req.rid] = _Live(identity, req)
        self.stats.prompt_tokens += len(req.input_ids)
        self.scheduler.add_request(req)

    def _step(self) -> None:
        try:
            touched = self.scheduler.step()
        except Exception as e:
            # the batch's state is unknown: fail the requests it held, keep serving the rest
            self._fail_all(_describe(e))
            return
        for req in touched:
            live = self.live.get(req.rid)
            if live is None or live.req is not req:
                continue
            if req.error is not None:  # failed alone (e.g. its grammar did not compile)
                del self.live[req.rid]
                field = getattr(req.error, "field", "")
                message = getattr(req.error, "message", str(req.error))
                self._send(live.identity, m.ErrorOut(req.rid, field, message, "invalid_request"))
                continue
            self.stats.generation_tokens += len(req.output_ids) - live.counted
            live.counted = len(req.output_ids)
            if req.finished:
                self._finish(live)
            elif req.stream:
                self._emit(live)

    def _finish(self, live: _Live) -> None:
        req = live.req
        self.stats.cached_tokens += req.cached_tokens
        self.stats.finished_requests += 1
        del self.live[req.rid]
        self._emit(live)

    def _emit(self, live: _Live) -> None:
        req = live.req
        meta = build_meta_info(req, None, live.sent, not live.sent_input_logprobs)
        out = m.TokenOut(req.rid, req.output_ids[live.sent :], req.finished, meta)
        live.sent = len(req.output_ids)
        live.sent_input_logprobs = True
        self._send(live.identity, out)

    def _fail_all(self, message: str) -> None:
        traceback.print_exc(file=sys.stderr)
        self.stats.errors += 1
        for rid, live in list(self.live.items()):
            self.scheduler.abort(rid)
            self._send(live.identity, m.ErrorOut(rid, "", message, "internal"))
        self.live.clear()
        self.scheduler.aborted.clear()

    def _send(self, identity: bytes, msg: m.Message) -> None:
        try:
            self.sock.send_multipart([identity, m.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # that client is gone or not reading; its requests still finish

    # ---- introspection --------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        e = self.engine
        return {
            "vocab_size": e.vocab_size,
            "context_len": e.context_len,
            "kv_total": e.loaded.kv.total_size(),
            "has_tokenizer": e.tokenizer is not None,
            "model_path": str(e.loaded.path),
            "pid": os.getpid(),
        }

    def _stats(self) -> dict[str, Any]:
        sched, kv, st = self.scheduler, self.engine.loaded.kv, self.stats
        total = kv.total_size()
        free, cached = kv.available_size(), kv.evictable_size()
        idle_ok: bool | None = None
        if sched.is_idle() and not sched.aborted:
            try:
                self.engine.check_idle()
                idle_ok = True
            except AssertionError:
                idle_ok = False
        return {
            "running": len(sched.running) + (sched.chunked_req is not None),
            "queued": len(sched.waiting),
            "kv_used_tokens": total - free - cached,
            "kv_cached_tokens": cached,
            "kv_total_tokens": total,
            "kv_usage": (total - free - cached) / total,
            "cache_hit_rate": st.cached_tokens / max(st.prompt_tokens, 1),
            "prompt_tokens": st.prompt_tokens,
            "cached_tokens": st.cached_tokens,
            "generation_tokens": st.generation_tokens,
            "finished_requests": st.finished_requests,
            "forward_count": sched.forward_count,
            "retractions": sched.num_retractions,
            "errors": st.errors,
            "kv_idle_ok": idle_ok,
            "uptime_s": time.monotonic() - st.started,
        }


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---- starting one ---------------------------------------------------------------------------


class WorkerStartError(RuntimeError):
    """The worker died or stayed silent while loading."""


class WorkerProcess:
    """A worker subprocess: its endpoint, pid and stderr; ``stop`` ends it."""

    def __init__(self, proc: subprocess.Popen, endpoint: str, stderr_path: Path, tmp: Any):
        self.proc = proc
        self.endpoint = endpoint
        self.stderr_path = stderr_path
        self.info: dict[str, Any] = {}
        self._tmp = tmp

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.is_alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def start_worker(
    model_path: str | Path | None = None,
    endpoint: str | None = None,
    *,
    start_timeout: float = 300.0,
    **engine_options: Any,
) -> WorkerProcess:
    """Starts a worker subprocess and returns once it answers a ping (the model is loaded).

    ``endpoint`` defaults to a fresh ``ipc://`` socket in a temporary directory. Raises
    ``WorkerStartError`` with the worker's stderr tail if it exits or times out first.
    """
    tmp = tempfile.TemporaryDirectory(prefix="plait-worker-")
    endpoint = endpoint or f"ipc://{tmp.name}/worker.sock"
    stderr_path = Path(tmp.name) / "stderr.log"
    cmd = [sys.executable, "-m", "plait.runtime.worker", "--endpoint", endpoint]
    if model_path is not None:
        cmd += ["--model", str(model_path)]
    cmd += ["--options", json.dumps(engine_options)]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    worker = WorkerProcess(proc, endpoint, stderr_path, tmp)
    try:
        worker.info = _wait_ready(worker, start_timeout)
    except BaseException:
        worker.stop(timeout=2.0)
        raise
    return worker


def _wait_ready(worker: WorkerProcess, timeout: float) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.endpoint)
    deadline = time.monotonic() + timeout
    try:
        sock.send(m.encode(m.PingReq()))
        while time.monotonic() < deadline:
            if sock.poll(100):
                reply = m.decode(sock.recv())
                if isinstance(reply, m.Pong):
                    return reply.info
            if not worker.is_alive():
                raise WorkerStartError(
                    f"worker exited with code {worker.proc.returncode} while starting; "
                    f"stderr tail:\n{worker.stderr_tail()}"
                )
        raise WorkerStartError(
            f"worker did not answer within {timeout:.0f} s; stderr tail:\n{worker.stderr_tail()}"
        )
    finally:
        sock.close(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="plait worker: one model behind a ZMQ socket")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--options", default="{}", help="Engine keyword arguments as JSON")
    args = ap.parse_args(argv)
    parent = os.getppid()
    options = json.loads(args.options)
    if not isinstance(options, dict):
        ap.error("--options must be a JSON object")
    engine = Engine(args.model, **options)
    worker = Worker(engine, args.endpoint, parent_pid=parent)

    def stop(_signum, _frame) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
