"""``plait serve`` as a child process on a free loopback port, once it serves: for the tests,
benchmarks and examples that need a real server."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from plait.runtime.server.cli import SERVING_ON


class ServerStartError(RuntimeError):
    """The server exited, or did not answer ``/health`` in time, while starting."""


@dataclass(slots=True)
class ServerProcess:
    url: str
    proc: subprocess.Popen


@contextmanager
def serve(
    *args: str, log: Path | None = None, timeout: float = 600.0, stop_timeout: float = 15.0
) -> Iterator[ServerProcess]:
    """Yields ``python -m plait.runtime.server --port 0 ARGS`` once ``/health`` answers 200;
    on exit terminates it (SIGTERM, then SIGKILL after ``stop_timeout`` s). The server binds
    a port the kernel picks and names it on its start-up line, so servers started side by side
    (parallel tests) never race for one. Its output goes to ``log`` (a temporary file if
    None); ServerStartError carries the output's tail if it exits first or is not serving
    after ``timeout`` s (a hang guard: a cold start loads the model)."""
    with tempfile.TemporaryDirectory(prefix="plait-serve-") as tmp:
        log = log or Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "plait.runtime.server", "--port", "0", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = _wait_serving(proc, log, timeout)
            yield ServerProcess(url, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_serving(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """The server's URL, from its start-up line (``plait: serving on URL``), once ``/health``
    there answers 200."""
    deadline = time.monotonic() + timeout
    url = None
    while True:
        if proc.poll() is not None:
            raise ServerStartError(f"plait serve exited ({proc.returncode}): {_tail(log)}")
        url = url or _serving_url(log)
        try:
            if url is not None and httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ServerStartError(f"plait serve did not come up in {timeout:g} s: {_tail(log)}")
        time.sleep(0.1)


def _serving_url(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(SERVING_ON):
            return line.removeprefix(SERVING_ON).strip()
    return None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]
