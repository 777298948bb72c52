"""Which waiting requests to prefill first: lpm, fcfs, dfs-weight."""

from __future__ import annotations

from collections import defaultdict

from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.radix_tree import TreeNode
from plait.runtime.worker.request import Req

POLICIES = ("lpm", "fcfs", "dfs-weight")
# Past this queue length, matching every request each round costs more than it saves.
_LPM_MAX_QUEUE = 128
# Requests whose first tokens repeat another waiting request's wait one round, so the shared
# prefix is computed once and then reused from the tree (in-batch prefix caching).
_IN_BATCH_PREFIX = 32


class SchedulePolicy:
    """Orders the waiting queue. Invariant: returns a permutation of the queue; every request
    it returns has ``prefix_indices`` / ``last_node`` set by a fresh match."""

    def __init__(self, policy: str, kv: CacheManager) -> None:
        if policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {policy!r}")
        self.kv = kv
        self.policy = "fcfs" if kv.disabled and policy != "fcfs" else policy

    def order(self, waiting: list[Req]) -> tuple[list[Req], set[int]]:
        """Returns the queue in priority order and the ids of requests deferred this round."""
        for req in waiting:
            self.kv.match(req)
        deferred = self._in_batch_duplicates(waiting)
        if self.policy == "lpm" and len(waiting) <= _LPM_MAX_QUEUE:
            ordered = sorted(waiting, key=lambda r: -len(r.prefix_indices))
        elif self.policy == "dfs-weight":
            ordered = _dfs_weight(waiting, self.kv.tree.root)
        else:
            ordered = list(waiting)
        return ordered, deferred

    def _in_batch_duplicates(self, waiting: list[Req]) -> set[int]:
        if self.kv.disabled:
            return set()
        seen: set[tuple[int, ...]] = set()
        deferred: set[int] = set()
        for req in waiting:
            if len(req.prefix_indices) >= _IN_BATCH_PREFIX or req.max_prefix_len < _IN_BATCH_PREFIX:
                continue
            head = tuple(req.fill_ids[:_IN_BATCH_PREFIX])
            if head in seen:
                deferred.add(id(req))
            else:
                seen.add(head)
        return deferred


def _dfs_weight(waiting: list[Req], root: TreeNode) -> list[Req]:
    """Visits the tree heaviest subtree first (weight = waiting requests below a node), so
    requests that share a prefix run back to back while it is still cached."""
    at_node: dict[int, list[Req]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    children: dict[int, list[TreeNode]] = defaultdict(list)
    for req in waiting:
        node = req.last_node or root
        at_node[id(node)].append(req)
        while True:
            weight[id(node)] += 1
            parent = node.parent
            if parent is None:
                break
            if weight[id(node)] == 1:
                children[id(parent)].append(node)
            node = parent
    out: list[Req] = []
    stack = [root]
    while stack:
        node = stack.pop()
        out.extend(at_node[id(node)])
        # heaviest child is popped first
        stack.extend(sorted(children[id(node)], key=lambda c: weight[id(c)]))
    return out
