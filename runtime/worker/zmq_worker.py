"""The worker process: one ``EngineCore`` behind a ZMQ ROUTER socket, batching every client.

Started by ``start_worker`` (``python -m plait.runtime.worker``), which writes the
``StartWorker`` message (an ``EngineConfig``) on its stdin.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections import defaultdict

import zmq

from plait.runtime import messages as m
from plait.runtime.config import EngineConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import check_request
from plait.runtime.parent_death import die_with_parent
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore

# How long an idle worker blocks in poll before it checks its parent and signals again.
IDLE_POLL_MS = 50


class Worker:
    """Serves one EngineCore to any number of DEALER clients.

    Invariants: a message that fails to decode or validate is answered with ``ErrorOut`` and
    changes nothing; every admitted request gets records until exactly one final record (a
    ``finish_reason`` or an ``error``), unless its client is gone; each step sends one
    ``BatchOut`` frame per client that has records; the loop never blocks while there is work.
    """

    def __init__(self, core: EngineCore, endpoint: str, parent_pid: int | None = None) -> None:
        self.core = core
        self.endpoint = endpoint
        self.parent_pid = parent_pid
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # a slow client costs memory, never lost outputs
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(endpoint)
        self.limits = core.limits
        self.owner: dict[str, bytes] = {}  # rid -> client identity, while the request lives
        self.stopping = False

    def run(self) -> None:
        try:
            while not self.stopping:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    break
                self._drain()
                if self.stopping:
                    break
                if self.core.has_work:
                    self._step()
                else:
                    self.sock.poll(IDLE_POLL_MS)
        finally:
            self.sock.close(0)
            self.ctx.term()

    def _drain(self) -> None:
        # asked first: a recv that finds nothing raises zmq.Again, once a step
        while self.sock.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            identity, data = frames
            try:
                msg = m.decode(data)
            except m.MessageError as e:
                self._send(identity, m.ErrorOut("", "message", str(e), "invalid_request"))
                continue
            try:
                self._handle(identity, msg)
            except Exception as e:  # one message fails alone; the loop serves on
                traceback.print_exc(file=sys.stderr)
                rid = getattr(msg, "rid", "")
                self._send(identity, m.ErrorOut(rid if isinstance(rid, str) else "", "",
                                                _describe(e), "internal"))  # fmt: skip

    def _handle(self, identity: bytes, msg: m.Message) -> None:
        if isinstance(msg, m.GenerateReq):
            self._add(identity, msg)
        elif isinstance(msg, m.AbortReq):
            self.core.abort(msg.rid)
        elif isinstance(msg, m.PingReq):
            self._send(identity, m.Pong(self.core.info()))
        elif isinstance(msg, m.StatsReq):
            self._send(identity, m.StatsOut(self.core.stats()))
        elif isinstance(msg, m.FlushCacheReq):
            self._send(identity, m.FlushCacheOut(self.core.flush_cache(msg.tenant)))
        elif isinstance(msg, m.ShutdownReq):
            self.stopping = True
        else:
            kind = type(msg).__name__
            self._send(
                identity, m.ErrorOut("", "message", f"{kind} is not a request", "invalid_request")
            )

    def _add(self, identity: bytes, msg: m.GenerateReq) -> None:
        try:
            params = SamplingParams.from_dict(msg.sampling_params)
            if params.n != 1:
                raise InvalidRequestError("n", "the worker takes n == 1; the client expands n")
            check_request(params, msg.input_ids, "input_ids", self.limits)
            scope = RequestScope(msg.priority, msg.tenant, msg.cache_salt)
            self.core.add_request(msg.rid, msg.input_ids, params, msg.stream, scope)
        except InvalidRequestError as e:
            self._send(identity, m.ErrorOut(msg.rid, e.field, e.message, "invalid_request"))
            return
        except Exception as e:  # a malformed field the validators did not foresee
            self._send(identity, m.ErrorOut(msg.rid, "", _describe(e), "internal"))
            return
        self.owner[msg.rid] = identity

    def _step(self) -> None:
        try:
            outputs = self.core.step(self._pending)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            outputs = self.core.fail_all(_describe(e))
        by_client: dict[bytes, list[m.ReqOutput]] = defaultdict(list)
        for out in outputs:
            identity = self.owner.get(out.rid)
            if identity is None:
                continue
            if out.finish_reason is not None or out.error is not None:
                del self.owner[out.rid]
            by_client[identity].append(out)
        for identity, batch in by_client.items():
            self._send(identity, m.BatchOut(batch))

    def _pending(self) -> bool:
        """A message waits on the socket (a flag read, no syscall)."""
        return bool(self.sock.get(zmq.EVENTS) & zmq.POLLIN)

    def _send(self, identity: bytes, msg: m.Message) -> None:
        try:
            data = m.encode(msg)
        except Exception:  # a record we cannot encode: its request must still end
            traceback.print_exc(file=sys.stderr)
            data = m.encode(
                m.ErrorOut(getattr(msg, "rid", ""), "", "unencodable reply", "internal")
            )
        try:
            self.sock.send_multipart([identity, data], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # that client is gone or not reading; its requests still finish


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def main() -> None:
    """Reads the ``StartWorker`` message from stdin, loads the model, serves until told."""
    if len(sys.argv) != 3 or sys.argv[1] != "--endpoint":
        sys.exit("usage: python -m plait.runtime.worker --endpoint ENDPOINT < StartWorker frame")
    parent = os.getppid()
    die_with_parent(parent)
    msg = m.decode(sys.stdin.buffer.read())
    if not isinstance(msg, m.StartWorker):
        sys.exit(f"expected a StartWorker message on stdin, got {type(msg).__name__}")
    core = EngineCore(EngineConfig.from_dict(msg.config))
    core.own_process()
    worker = Worker(core, sys.argv[2], parent_pid=parent)

    def stop(_signum: int, _frame: object) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        core.shutdown()  # kills a compile in flight, so the exit does not wait for it
