"""The scheduler's admission decisions, asserted directly on its parts: the order of the waiting
queue (``SchedulePolicy``) and what one prefill batch admits under its budgets (``PrefillAdder``).
Every expected order and number is worked out by hand from the scenario."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from plait.radix_cache.cache_manager import CacheManager
from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.prefill_adder import CLIP_MAX_NEW_TOKENS, PrefillAdder
from plait.runtime.worker.request import Req
from plait.runtime.worker.schedule_policy import _IN_BATCH_PREFIX, _LPM_MAX_QUEUE, SchedulePolicy

ModelDir = Callable[..., Path]


def make_engine(tiny_model_dir: ModelDir, max_total_tokens: int, **options: object) -> Engine:
    return Engine(tiny_model_dir("llama"), max_total_tokens=max_total_tokens, **options)


def run(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def make_req(rid: str, ids: list[int], max_new_tokens: int = 16, n_out: int = 0) -> Req:
    req = Req(rid, ids, SamplingParams(max_new_tokens=max_new_tokens))
    req.output_ids = [3] * n_out
    return req


def cache_run(cache: CacheManager, ids: list[int]) -> None:
    """Leaves ``ids`` in the radix tree (unlocked) as a finished request would."""
    slots = cache.alloc_tokens(len(ids))
    assert slots is not None
    cached = cache.tree.insert(ids, slots)
    cache.kv_pool.free(slots[:cached])


def admit(adder: PrefillAdder, req: Req) -> bool:
    """``add_one`` after the fresh match that ``SchedulePolicy.order`` gives every request."""
    adder.kv.match(req)
    return adder.add_one(req)


def rids(reqs: list[Req]) -> list[str]:
    return [r.rid for r in reqs]


# ---- SchedulePolicy.order ------------------------------------------------------------------


def prefix_queue(cache: CacheManager) -> list[Req]:
    """Five requests whose cached prefixes are 0, 10, 20, 0 and 40 tokens, in that arrival order;
    none is long enough to share a 32-token head, so none is deferred."""
    a = run(10, 40)
    cache_run(cache, a)
    cache_run(cache, run(100, 10))
    return [
        make_req("none", run(200, 5)),
        make_req("b10", run(100, 10) + run(210, 5)),
        make_req("a20", a[:20] + run(220, 5)),
        make_req("none2", run(240, 5)),
        make_req("a40", a + run(230, 5)),
    ]


def test_lpm_orders_by_matched_prefix_longest_first_ties_in_arrival_order(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 512).scheduler.kv
    waiting = prefix_queue(cache)
    ordered, deferred = SchedulePolicy("lpm", cache).order(waiting)
    assert rids(ordered) == ["a40", "a20", "b10", "none", "none2"]
    assert [len(r.prefix_indices) for r in ordered] == [40, 20, 10, 0, 0]
    assert deferred == set()


def test_fcfs_keeps_arrival_order_and_matches_each_request_as_it_is_reached(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 512).scheduler.kv
    waiting = prefix_queue(cache)
    lazy, deferred = SchedulePolicy("fcfs", cache).order(waiting)
    ordered = list(lazy)  # fcfs matches lazily: consuming the order matches every request
    assert rids(ordered) == ["none", "b10", "a20", "none2", "a40"]
    assert [len(r.prefix_indices) for r in ordered] == [0, 10, 20, 0, 40]
    assert deferred == set()


def test_dfs_weight_visits_the_heaviest_subtree_first(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 512).scheduler.kv
    p, p1, p2, q = run(10, 20), run(40, 20), run(70, 20), run(100, 20)
    cache_run(cache, p + p1)
    cache_run(cache, p + p2)  # splits the first run: root -> P -> {P1, P2}; root -> Q
    cache_run(cache, q)
    waiting = [
        make_req("q", q + run(200, 3)),
        make_req("p2", p + p2 + run(210, 3)),
        make_req("p1a", p + p1 + run(220, 3)),
        make_req("p", p + run(230, 3)),
        make_req("fresh", run(240, 3)),
        make_req("p1b", p + p1 + run(250, 3)),
    ]
    ordered, deferred = SchedulePolicy("dfs-weight", cache).order(waiting)
    # root's own request, then P (weight 4): its own, P1 (weight 2), P2 (weight 1); then Q (1)
    assert rids(ordered) == ["fresh", "p", "p1a", "p1b", "p2", "q"]
    assert [len(r.prefix_indices) for r in ordered] == [0, 20, 40, 40, 40, 20]
    assert deferred == set()


def test_requests_sharing_a_32_token_head_with_an_earlier_one_wait_one_round(tiny_model_dir):
    assert _IN_BATCH_PREFIX == 32
    sched = make_engine(tiny_model_dir, 512, schedule_policy="fcfs").scheduler
    s = run(10, 32)
    a = make_req("a", s + [100])
    b = make_req("b", s + [101, 102])  # same head as a: waits
    c = make_req("c", run(50, 40))
    d = make_req("d", s[:31] + [103, 104])  # differs at token 31: runs
    e = make_req("e", s)  # may reuse at most 31 tokens: never deferred
    f = make_req("f", s + [105])  # same head as a: waits
    waiting = [a, b, c, d, e, f]
    ordered, deferred = sched.policy.order(waiting)
    assert rids(ordered) == rids(waiting)
    assert deferred == {id(b), id(f)}

    sched.waiting = list(waiting)
    assert rids(sched._schedule_prefill()) == ["a", "c", "d", "e"]
    assert rids(sched.waiting) == ["b", "f"]


def test_a_cached_32_token_head_defers_nothing(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 512).scheduler.kv
    s = run(10, 32)
    cache_run(cache, s + [100])
    waiting = [make_req("a", s + [100]), make_req("b", s + [101, 102]), make_req("f", s + [105])]
    ordered, deferred = SchedulePolicy("lpm", cache).order(waiting)
    assert [len(r.prefix_indices) for r in ordered] == [32, 32, 32]
    assert deferred == set()


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight"])
def test_a_disabled_radix_cache_falls_back_to_fcfs_without_deferral(tiny_model_dir, policy):
    sched = make_engine(
        tiny_model_dir, 512, schedule_policy=policy, disable_radix_cache=True
    ).scheduler
    assert sched.policy.policy == "fcfs"
    s = run(10, 40)
    waiting = [make_req("x", run(200, 5)), make_req("a", s + [1]), make_req("b", s + [2])]
    lazy, deferred = sched.policy.order(waiting)
    ordered = list(lazy)
    assert rids(ordered) == ["x", "a", "b"]
    assert [len(r.prefix_indices) for r in ordered] == [0, 0, 0]
    assert deferred == set()


def test_lpm_stops_sorting_above_the_queue_length_threshold(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 512).scheduler.kv
    cache_run(cache, run(10, 40))
    policy = SchedulePolicy("lpm", cache)
    hit = make_req("hit", run(10, 40) + [300])
    fillers = [make_req(f"f{i}", [250, 3 + i]) for i in range(_LPM_MAX_QUEUE)]

    at_limit = fillers[: _LPM_MAX_QUEUE - 1] + [hit]
    ordered, _ = policy.order(at_limit)
    assert ordered[0] is hit and rids(ordered[1:]) == rids(at_limit[:-1])

    above = fillers + [hit]
    ordered, _ = policy.order(above)
    assert rids(ordered) == rids(above)
    assert len(hit.prefix_indices) == 40  # matched, only not sorted


# ---- PrefillAdder -----------------------------------------------------------------------------


def test_rem_total_is_free_plus_evictable_minus_the_decode_room_of_running_requests(
    tiny_model_dir,
):
    cache = make_engine(tiny_model_dir, 1000).scheduler.kv
    cache_run(cache, run(10, 50))
    owned = cache.alloc_tokens(30)  # as if a running request owned them
    assert owned is not None
    running = [
        make_req("r1", [5] * 4, max_new_tokens=100, n_out=10),  # 90 to go
        make_req("r2", [5] * 4, max_new_tokens=CLIP_MAX_NEW_TOKENS + 1000),  # clipped to 4096
    ]
    adder = PrefillAdder(
        cache, running, 0.1, max_prefill_tokens=300, chunked_prefill_size=64, mixed_decodes=2
    )
    # free 920 + evictable 50 - (90 + 4096) * 0.1
    assert adder.rem_total == pytest.approx(551.4)
    assert adder.rem_input == 298 and adder.rem_chunk == 62
    cache.kv_pool.free(owned)
    cache.check_idle()


def test_max_prefill_tokens_admits_until_spent_and_only_the_first_request_may_overrun(
    tiny_model_dir,
):
    cache = make_engine(tiny_model_dir, 1000).scheduler.kv
    adder = PrefillAdder(cache, [], 0.5, max_prefill_tokens=100, chunked_prefill_size=None)
    assert admit(adder, make_req("a", run(10, 60)))
    assert not admit(adder, make_req("b", run(100, 50)))  # 60 + 50 > 100
    assert admit(adder, make_req("c", run(100, 40)))  # 60 + 40 == 100
    assert not admit(adder, make_req("d", run(200, 1)))  # spent
    assert [r.extend_len for r in adder.can_run] == [60, 40] and adder.rem_input == 0

    alone = PrefillAdder(cache, [], 0.5, max_prefill_tokens=100, chunked_prefill_size=None)
    assert admit(alone, make_req("big", run(10, 150)))  # else it could never run
    assert alone.can_run[0].extend_len == 150 and alone.new_chunked_req is None


def test_the_request_crossing_the_chunk_becomes_the_chunked_request_with_what_is_left(
    tiny_model_dir,
):
    cache = make_engine(tiny_model_dir, 1000).scheduler.kv
    adder = PrefillAdder(cache, [], 0.5, max_prefill_tokens=4096, chunked_prefill_size=64)
    a, b = make_req("a", run(10, 20)), make_req("b", run(100, 100))
    assert admit(adder, a) and admit(adder, b)
    assert (a.extend_len, b.extend_len) == (20, 44)
    assert adder.new_chunked_req is b and adder.rem_chunk == 0
    # memory is charged for b's whole prompt: 1000 - (20 + 1) - (100 + 16)
    assert adder.rem_total == 863
    assert not admit(adder, make_req("c", run(200, 1)))

    alone = PrefillAdder(cache, [], 0.5, max_prefill_tokens=4096, chunked_prefill_size=64)
    assert admit(alone, big := make_req("big", run(10, 100)))
    assert big.extend_len == 64 and alone.new_chunked_req is big


def test_mixed_decode_tokens_count_against_the_prefill_and_chunk_budgets(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 1000).scheduler.kv
    running = [make_req(f"r{i}", [5, 6], max_new_tokens=10, n_out=1) for i in range(3)]
    adder = PrefillAdder(
        cache, running, 0.5, max_prefill_tokens=4096, chunked_prefill_size=64, mixed_decodes=3
    )
    assert admit(adder, req := make_req("a", run(10, 100)))
    assert req.extend_len == 61 and adder.new_chunked_req is req

    full = PrefillAdder(
        cache, running, 0.5, max_prefill_tokens=3, chunked_prefill_size=None, mixed_decodes=3
    )
    assert not admit(full, make_req("b", run(10, 5)))
    assert full.can_run == []


def test_the_first_request_of_an_idle_engine_needs_room_only_for_its_prompt(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 200).scheduler.kv
    adder = PrefillAdder(cache, [], 0.5, max_prefill_tokens=4096, chunked_prefill_size=None)
    assert admit(adder, make_req("big", run(10, 150), max_new_tokens=1000))
    assert adder.rem_total == 200 - 151
    assert not admit(adder, make_req("x", run(200, 10), max_new_tokens=40))  # 10 + 40 > 49
    assert adder.rem_total == 49
    assert admit(adder, make_req("y", run(200, 10), max_new_tokens=39))  # 10 + 39 == 49
    assert adder.rem_total == 0

    running = [make_req("r", [5, 6], max_new_tokens=2, n_out=1)]  # 1 token of decode room
    busy = PrefillAdder(cache, running, 1.0, max_prefill_tokens=4096, chunked_prefill_size=None)
    assert busy.rem_total == 199
    assert not admit(busy, make_req("big", run(10, 150), max_new_tokens=1000))


def test_a_request_that_does_not_fit_is_refused_and_its_prefix_lock_undone(tiny_model_dir):
    cache = make_engine(tiny_model_dir, 200).scheduler.kv
    prefix = run(10, 40)
    cache_run(cache, prefix)
    running = [make_req("r", [5, 6], max_new_tokens=101, n_out=1)]  # reserves 100 at ratio 1
    adder = PrefillAdder(cache, running, 1.0, max_prefill_tokens=4096, chunked_prefill_size=None)
    assert adder.rem_total == 160 + 40 - 100

    # 30 new tokens + 100 decode room + 40 cached tokens it would pin = 170 > 100
    refused = make_req("refused", prefix + run(60, 30), max_new_tokens=100)
    assert not admit(adder, refused)
    assert adder.can_run == [] and adder.rem_total == 100
    assert cache.evictable_size() == 40 and cache.tree.protected_size() == 0

    # 30 + 30 + 40 == 100: fits exactly, and its prefix is pinned
    fits = make_req("fits", prefix + run(60, 30), max_new_tokens=30)
    assert admit(adder, fits)
    assert adder.rem_total == 0 and fits.extend_len == 30
    assert cache.evictable_size() == 0 and cache.tree.protected_size() == 40
    cache.unlock(fits)
    cache.check_idle()


def test_admission_stops_at_the_first_request_that_does_not_fit(tiny_model_dir):
    sched = make_engine(
        tiny_model_dir, 200, schedule_policy="fcfs", chunked_prefill_size=None
    ).scheduler
    small = make_req("small", run(10, 10), max_new_tokens=10)  # alone: needs 11
    huge = make_req("huge", run(30, 100), max_new_tokens=200)  # needs 300 > 189
    later = make_req("later", run(140, 10), max_new_tokens=10)  # would fit, but waits its turn
    sched.waiting = [small, huge, later]
    assert rids(sched._schedule_prefill()) == ["small"]
    assert rids(sched.waiting) == ["huge", "later"]
