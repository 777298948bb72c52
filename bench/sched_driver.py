"""Drives an ``EngineCore`` through timed arrivals on a clock of scheduler steps.

Latency in steps does not depend on the machine's speed, so both the scheduling tests and the
policy benchmark measure in it: one tick per ``core.step()`` (one forward), and one tick per
idle wait for the next arrival.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore


@dataclass(slots=True)
class Arrival:
    step: int
    rid: str
    input_ids: list[int]
    params: SamplingParams
    priority: int | None = None
    tenant: str | None = None


@dataclass(slots=True)
class Timing:
    """Ticks of one request: when it arrived, was first admitted and finished."""

    arrival: int
    admitted: int = -1
    finished: int = -1
    output_ids: list[int] | None = None
    tenant: str | None = None

    @property
    def latency(self) -> int:
        return self.finished - self.arrival

    @property
    def wait(self) -> int:
        return self.admitted - self.arrival


def run_arrivals(
    core: EngineCore,
    arrivals: list[Arrival],
    on_tick: Callable[[int], None] | None = None,
    max_ticks: int = 1_000_000,
) -> dict[str, Timing]:
    """Submits each arrival at its tick and steps until all finish; ``on_tick(tick)`` runs
    after every tick. Returns the timings by rid."""
    pending = sorted(arrivals, key=lambda a: a.step)
    timings: dict[str, Timing] = {}
    live = {}
    sched = core.scheduler
    i = 0
    for tick in range(max_ticks):
        while i < len(pending) and pending[i].step <= tick:
            a = pending[i]
            scope = RequestScope(a.priority, a.tenant)
            core.add_request(a.rid, a.input_ids, a.params, False, scope)
            timings[a.rid] = Timing(tick, tenant=a.tenant)
            live[a.rid] = sched.find(a.rid)
            i += 1
        if core.has_work:
            for out in core.step():
                if out.error is not None:
                    raise RuntimeError(f"{out.rid}: {out.error}")
                if out.finish_reason is not None:
                    t = timings[out.rid]
                    t.finished = tick + 1
                    t.admitted = t.admitted if t.admitted >= 0 else tick + 1
                    timings[out.rid].output_ids = live.pop(out.rid).output_ids
            for rid, req in live.items():
                if req.admitted_step is not None and timings[rid].admitted < 0:
                    timings[rid].admitted = tick + 1
        elif i == len(pending):
            break
        if on_tick is not None:
            on_tick(tick + 1)
    assert not live, f"unfinished after {max_ticks} ticks: {sorted(live)}"
    return timings
