"""Skipping rematches against an unchanged tree changes nothing about the policy's order."""

from __future__ import annotations

import random
from itertools import islice

import torch

from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.radix_cache.radix_tree import TreeNode
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.request import Req
from plait.runtime.worker.schedule_policy import SchedulePolicy


def make_kv() -> CacheManager:
    return CacheManager(ReqToTokenPool(8, 256), TokenToKVPool(4096, 1, 1, 1, torch.float32))


def cache(kv: CacheManager, key: list[int]) -> None:
    kv.tree.insert(key, kv.kv_pool.alloc(len(key)))


def waiting_queue(rng: random.Random, stems: list[list[int]], n: int) -> list[Req]:
    reqs = []
    for i in range(n):
        stem = stems[i % len(stems)][: rng.randrange(0, 40)]
        own = [rng.randrange(1000, 2000) for _ in range(rng.randrange(1, 20))]
        reqs.append(Req(f"r{i}", stem + own, SamplingParams()))
    return reqs


def rematched_order(policy: SchedulePolicy, waiting: list[Req]) -> list[tuple[str, list[int]]]:
    """The order with every memo dropped: what matching everything afresh gives."""
    for req in waiting:
        req.match_version = -1
    return snapshot(policy, waiting)


def snapshot(policy: SchedulePolicy, waiting: list[Req]) -> list[tuple[str, list[int]]]:
    ordered, deferred = policy.order(waiting)
    return [(r.rid, r.prefix_indices.tolist()) for r in ordered if id(r) not in deferred]


def path(node: TreeNode) -> list[TreeNode]:
    out = []
    while node is not None:
        out.append(node)
        node = node.parent
    return out


def test_lpm_order_is_the_same_with_and_without_rematching() -> None:
    rng = random.Random(0)
    kv = make_kv()
    stems = [[rng.randrange(1, 1000) for _ in range(40)] for _ in range(5)]
    for stem in stems[:3]:
        cache(kv, stem[: rng.randrange(5, 40)])
    waiting = waiting_queue(rng, stems, 60)
    policy = SchedulePolicy("lpm", kv)

    first = snapshot(policy, waiting)
    kept = [r.prefix_indices for r in waiting]
    clock = max(n.last_access_time for r in waiting for n in path(r.last_node))
    assert snapshot(policy, waiting) == first
    assert all(r.prefix_indices is k for r, k in zip(waiting, kept)), "the match was skipped"
    # ...but the matched paths are as recently used as a rematch would leave them
    assert all(n.last_access_time > clock for r in waiting for n in path(r.last_node))
    assert rematched_order(policy, waiting) == first

    # the tree changes: a longer cached prefix, a new one, then an eviction
    version = kv.tree.version
    cache(kv, stems[0])
    cache(kv, stems[4][:30])
    assert kv.tree.version > version
    grown = snapshot(policy, waiting)
    assert grown != first
    assert grown == rematched_order(policy, waiting)
    kv.tree.evict(25)
    evicted = snapshot(policy, waiting)
    assert evicted == rematched_order(policy, waiting)


def test_fcfs_and_long_lpm_queues_match_only_the_requests_reached() -> None:
    rng = random.Random(1)
    kv = make_kv()
    stems = [[rng.randrange(1, 1000) for _ in range(40)] for _ in range(3)]
    cache(kv, stems[0][:20])
    for policy, n in (("fcfs", 10), ("lpm", 200)):
        waiting = waiting_queue(rng, stems, n)
        ordered, _ = SchedulePolicy(policy, kv).order(waiting)
        reached = list(islice(ordered, 4))
        assert reached == waiting[:4]  # the queue order
        assert all(r.match_version == kv.tree.version for r in reached)
        assert all(r.match_version == -1 for r in waiting[4:])


def test_lazy_order_defers_in_batch_duplicates_as_the_full_one_does() -> None:
    rng = random.Random(2)
    kv = make_kv()
    shared = [rng.randrange(1, 1000) for _ in range(40)]
    waiting = [
        Req(f"r{i}", (shared if i % 2 else []) + [2000 + i] * 5, SamplingParams()) for i in range(8)
    ]
    ordered, deferred = SchedulePolicy("fcfs", kv).order(waiting)
    admitted = [r for r in ordered if id(r) not in deferred]
    # the first request with the uncached shared head goes; the others wait for its prefix
    assert [r.rid for r in admitted] == ["r0", "r1", "r2", "r4", "r6"]
    ordered, deferred = SchedulePolicy("dfs-weight", kv).order(waiting)
    assert {r.rid for r in waiting if id(r) in deferred} == {"r3", "r5", "r7"}
