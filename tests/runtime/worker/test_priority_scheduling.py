"""Priority scheduling on the tiny model, driven step by step through ``EngineCore``: order by
priority (SGLang's direction: larger first, flippable), and preemption by retraction that loses
nothing (greedy outputs equal solo runs; the KV accounting is whole when idle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore

ModelDir = Callable[..., Path]


def params(max_new: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new, min_new_tokens=max_new, temperature=0)


def prompt(i: int, length: int = 6) -> list[int]:
    return [(7 * i + 3 * j) % 300 + 10 for j in range(length)]


def run_to_idle(core: EngineCore, limit: int = 2000) -> None:
    for _ in range(limit):
        if not core.has_work:
            return
        core.step()
    raise AssertionError("the engine did not go idle")


def fcfs_core(model: Path, **opts) -> EngineCore:
    """An fcfs engine's core with priority scheduling on (unless ``opts`` say otherwise)."""
    opts = {"max_total_tokens": 2048, "enable_priority_scheduling": True, **opts}
    return Engine(model, schedule_policy="fcfs", **opts).core


def test_a_high_priority_request_starts_before_a_full_queue_of_low_ones(tiny_model_dir):
    core = fcfs_core(tiny_model_dir("llama"), max_running_requests=2)
    for i in range(6):
        core.add_request(f"low{i}", prompt(i), params(4), scope=RequestScope(priority=0))
    core.add_request("high", prompt(9), params(4), scope=RequestScope(priority=5))
    reqs = {rid: core.scheduler.find(rid) for rid in [f"low{i}" for i in range(6)] + ["high"]}
    run_to_idle(core)
    admitted = {rid: r.admitted_step for rid, r in reqs.items()}
    assert admitted["high"] == 1
    assert all(admitted[f"low{i}"] >= admitted["high"] for i in range(6))
    # inside one class, the base policy's (arrival) order
    lows = [admitted[f"low{i}"] for i in range(6)]
    assert lows == sorted(lows) and lows[-1] > lows[0]
    core.check_idle()


def test_without_priority_scheduling_the_field_is_carried_but_not_used(tiny_model_dir):
    core = fcfs_core(
        tiny_model_dir("llama"), max_running_requests=1, enable_priority_scheduling=False
    )
    for i in range(3):
        core.add_request(f"low{i}", prompt(i), params(3), scope=RequestScope(priority=0))
    core.add_request("high", prompt(9), params(3), scope=RequestScope(priority=5))
    reqs = [core.scheduler.find(r) for r in ("low0", "low1", "low2", "high")]
    run_to_idle(core)
    assert reqs[-1].priority == 5
    assert [r.admitted_step for r in reqs] == sorted(r.admitted_step for r in reqs)


def test_low_values_first_flips_the_direction(tiny_model_dir):
    core = fcfs_core(
        tiny_model_dir("llama"), max_running_requests=1, schedule_low_priority_values_first=True
    )
    core.add_request("a", prompt(1), params(2), scope=RequestScope(priority=3))
    core.add_request("b", prompt(2), params(2), scope=RequestScope(priority=-1))
    core.add_request("c", prompt(3), params(2))  # None ranks as 0
    reqs = [core.scheduler.find(r) for r in "abc"]
    run_to_idle(core)
    assert sorted(reqs, key=lambda r: r.admitted_step) == [reqs[1], reqs[2], reqs[0]]


def solo_outputs(model: Path, jobs: dict[str, tuple[list[int], int]]) -> dict[str, list[int]]:
    eng = Engine(model, max_total_tokens=2048, schedule_policy="fcfs")
    return {
        rid: eng.generate(input_ids=ids, sampling_params=params(n))["output_ids"]
        for rid, (ids, n) in jobs.items()
    }


@pytest.mark.parametrize("trigger", ["batch_full", "memory_short"])
def test_preemption_retracts_a_lower_priority_request_and_loses_nothing(tiny_model_dir, trigger):
    model = tiny_model_dir("llama")
    if trigger == "batch_full":
        jobs = {"low0": (prompt(0, 20), 30), "low1": (prompt(1, 20), 30), "high": (prompt(5), 8)}
        opts = dict(max_total_tokens=2048, max_running_requests=2)
    else:
        # two lows hold ~2 x (40 + 30 reserved); the high one's 60 + 10 does not fit in 180
        jobs = {
            "low0": (prompt(0, 40), 30),
            "low1": (prompt(1, 40), 30),
            "high": (prompt(5, 60), 10),
        }
        opts = dict(max_total_tokens=180, max_running_requests=8)
    expected = solo_outputs(model, jobs)

    core = fcfs_core(model, **opts)
    for rid in ("low0", "low1"):
        ids, n = jobs[rid]
        core.add_request(rid, ids, params(n), scope=RequestScope(priority=0))
    reqs = {rid: core.scheduler.find(rid) for rid in ("low0", "low1")}
    for _ in range(5):
        core.step()
    assert len(core.scheduler.running) == 2 and all(len(r.output_ids) > 0 for r in reqs.values())
    ids, n = jobs["high"]
    core.add_request("high", ids, params(n), scope=RequestScope(priority=100))
    reqs["high"] = core.scheduler.find("high")
    step = core.scheduler.step_count
    core.step()
    assert reqs["high"].admitted_step == step + 1, "admitted on the very next step"
    assert core.scheduler.stats.preemptions >= 1
    assert any(r.retractions for rid, r in reqs.items() if rid != "high")
    run_to_idle(core)
    assert {rid: r.output_ids for rid, r in reqs.items()} == expected
    core.check_idle()


def test_preemption_respects_the_threshold(tiny_model_dir):
    core = fcfs_core(
        tiny_model_dir("llama"), max_running_requests=1, priority_scheduling_preemption_threshold=10
    )
    core.add_request("low", prompt(0), params(20), scope=RequestScope(priority=0))
    core.step()
    core.add_request(
        "mid", prompt(1), params(2), scope=RequestScope(priority=10)
    )  # not more than 10 above
    run_to_idle(core)
    assert core.scheduler.stats.preemptions == 0


def test_bad_priority_and_tenant_are_refused_naming_the_field(tiny_model_dir):
    eng = Engine(tiny_model_dir("llama"), max_total_tokens=2048)
    with pytest.raises(InvalidRequestError) as e:
        eng.generate(input_ids=prompt(0), priority="high")
    assert e.value.field == "priority"
    with pytest.raises(InvalidRequestError) as e:
        eng.core.add_request("x", prompt(0), params(2), scope=RequestScope(priority=2**40))
    assert e.value.field == "priority"
    with pytest.raises(InvalidRequestError) as e:
        eng.generate(input_ids=prompt(0), tenant="")
    assert e.value.field == "tenant"
