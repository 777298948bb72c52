"""Starting a worker process and waiting until its model is loaded (no torch here)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from plait.runtime import messages as m
from plait.runtime.config import EngineConfig


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
    config: EngineConfig | None = None,
    start_timeout: float = 300.0,
    while_loading: Callable[[], object] | None = None,
    **engine_options: Any,
) -> WorkerProcess:
    """Starts a worker subprocess and returns once it answers a ping (the model is loaded).

    The engine is ``config``, or ``EngineConfig.from_kwargs(model_path, **engine_options)``
    (validated here, so a bad option fails before a process starts). ``endpoint`` defaults to
    a fresh ``ipc://`` socket in a temporary directory. ``while_loading`` runs here once the
    process is launched, before the wait: the caller's own start-up work (imports) overlaps
    the model load instead of following it; an exception from it stops the worker and
    propagates. Raises ``WorkerStartError`` with the worker's stderr tail if the worker exits
    or times out first.
    """
    if config is None:
        config = EngineConfig.from_kwargs(model_path, **engine_options)
    config.validate()
    tmp = tempfile.TemporaryDirectory(prefix="plait-worker-")
    endpoint = endpoint or f"ipc://{tmp.name}/worker.sock"
    stderr_path = Path(tmp.name) / "stderr.log"
    cmd = [sys.executable, "-m", "plait.runtime.worker", "--endpoint", endpoint]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=err, stderr=err)
    assert proc.stdin is not None
    try:
        proc.stdin.write(m.encode(m.StartWorker(config.to_dict())))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; _wait_ready reports its stderr
    worker = WorkerProcess(proc, endpoint, stderr_path, tmp)
    try:
        if while_loading is not None:
            while_loading()
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
