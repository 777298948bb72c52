"""Timers for the engine's per-step work, shared by the step-overhead and streaming benchmarks:
they find the scheduler and the model runner in either runtime layout and time their methods."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def scheduler_and_runner(engine: Any) -> tuple[Any, Any]:
    """The engine's scheduler and model runner, in the old layout (``engine.scheduler``) or the
    new one (``engine.core.scheduler``)."""
    sched = getattr(engine, "scheduler", None)
    if sched is None:
        sched = getattr(getattr(engine, "core", None), "scheduler", None)
    if sched is None:
        raise RuntimeError("no scheduler at engine.scheduler or engine.core.scheduler")
    return sched, sched.runner


class MethodTimer:
    """Shadows ``obj.<name>`` with an instance attribute that calls the original and accumulates
    its ``time.perf_counter()`` duration; restores the attribute on exit."""

    def __init__(self, obj: Any, name: str, sync: Callable[[], None] | None = None) -> None:
        self.obj = obj
        self.name = name
        self.sync = sync
        self.seconds = 0.0
        self.calls = 0
        self._had_own = False
        self._original: Callable[..., Any] | None = None

    def __enter__(self) -> MethodTimer:
        self._had_own = self.name in vars(self.obj)
        original = getattr(self.obj, self.name)
        self._original = original
        sync = self.sync

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                out = original(*args, **kwargs)
                if sync is not None:
                    sync()
                return out
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        setattr(self.obj, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._had_own:
            setattr(self.obj, self.name, self._original)
        else:
            delattr(self.obj, self.name)


def device_sync(runner: Any) -> Callable[[], None] | None:
    device = getattr(runner, "device", None)
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return None
