"""A process that takes CPU beside a benchmark, the way other work on a 2-core box does.

``Contender(period_ms, burst_ms)`` busy-loops ``burst_ms`` of every ``period_ms`` while the
``with`` block runs: ``burst == period`` is a process that never sleeps (another job); a short
burst in a longer period is what ``plait serve`` and its HTTP client do beside the worker in a
single stream (measured: ~0.9 ms of server and ~0.6 ms of client CPU per 14-21 ms token), where
each burst takes a core from one of the step's threads for a while.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from types import TracebackType


def _run(stop: mp.Event, period_s: float, burst_s: float) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < burst_s:
            pass
        if period_s > burst_s:
            time.sleep(period_s - burst_s)


class Contender:
    """``burst_ms`` of busy CPU every ``period_ms`` in a child process, for a ``with`` block."""

    def __init__(self, period_ms: float, burst_ms: float) -> None:
        if not 0 < burst_ms <= period_ms:
            raise ValueError(f"burst_ms must be in (0, period_ms]; got {burst_ms}, {period_ms}")
        self.period_ms, self.burst_ms = period_ms, burst_ms
        self._stop = mp.Event()
        self._proc = mp.Process(
            target=_run, args=(self._stop, period_ms / 1e3, burst_ms / 1e3), daemon=True
        )

    @classmethod
    def parse(cls, spec: str) -> Contender:
        """``"PERIOD:BURST"`` in milliseconds, e.g. ``"7:1"``; ``"busy"`` never sleeps."""
        if spec == "busy":
            return cls(1, 1)
        period, _, burst = spec.partition(":")
        return cls(float(period), float(burst))

    def __str__(self) -> str:
        if self.burst_ms >= self.period_ms:
            return "a busy process"
        return f"{self.burst_ms:g} ms of CPU every {self.period_ms:g} ms"

    def __enter__(self) -> Contender:
        self._proc.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
