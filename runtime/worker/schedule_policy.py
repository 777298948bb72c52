"""Which waiting requests to prefill first: lpm, fcfs, dfs-weight."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator

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
    """Orders the waiting queue.

    Invariant: ``order`` yields each waiting request at most once, and every request it yields
    has ``prefix_indices`` / ``last_node`` equal to a match against the tree as it is when the
    request is yielded (kept from an earlier match only while the tree's ``version`` and the
    request's key are unchanged, which makes it the same result). lpm over a short queue and
    dfs-weight match the whole queue to order it; fcfs, and lpm past ``_LPM_MAX_QUEUE``, keep
    the queue order and match a request only when the caller reaches it.
    """

    def __init__(self, policy: str, kv: CacheManager) -> None:
        if policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {policy!r}")
        self.kv = kv
        self.policy = "fcfs" if kv.disabled and policy != "fcfs" else policy

    def order(self, waiting: list[Req]) -> tuple[Iterable[Req], set[int]]:
        """The queue in priority order and the ids of requests deferred this round (in-batch
        prefix duplicates, which the order also yields). When the order is lazy (see the class
        docstring) ``deferred`` holds the ids of the requests yielded so far."""
        deferred: set[int] = set()
        if self.policy == "fcfs" or (self.policy == "lpm" and len(waiting) > _LPM_MAX_QUEUE):
            return self._matched_in_order(waiting, deferred), deferred
        for req in waiting:
            self.kv.match(req)
        seen: set[tuple[Hashable, tuple[int, ...]]] = set()
        deferred.update(id(req) for req in waiting if self._is_duplicate(req, seen))
        if self.policy == "lpm":
            return sorted(waiting, key=lambda r: -len(r.prefix_indices)), deferred
        return _dfs_weight(waiting, self.kv.tree.root), deferred

    def _matched_in_order(self, waiting: list[Req], deferred: set[int]) -> Iterator[Req]:
        seen: set[tuple[Hashable, tuple[int, ...]]] = set()
        for req in waiting:
            self.kv.match(req)
            if self._is_duplicate(req, seen):
                deferred.add(id(req))
            yield req

    def _is_duplicate(self, req: Req, seen: set[tuple[Hashable, tuple[int, ...]]]) -> bool:
        """Whether a request earlier in the queue shares ``req``'s first tokens and cache
        namespace (it would reuse nothing from another's), none of which are cached yet;
        records ``req``'s head in ``seen`` otherwise."""
        if self.kv.disabled:
            return False
        if len(req.prefix_indices) >= _IN_BATCH_PREFIX or req.max_prefix_len < _IN_BATCH_PREFIX:
            return False
        head = (self.kv.namespace_of(req), tuple(req.fill_ids[:_IN_BATCH_PREFIX]))
        if head in seen:
            return True
        seen.add(head)
        return False


def _dfs_weight(waiting: list[Req], root: TreeNode) -> list[Req]:
    """Visits the tree (every namespace's subtree in turn) heaviest subtree first (weight =
    waiting requests below a node), so requests that share a prefix run back to back while it
    is still cached."""
    at_node: dict[int, list[Req]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    children: dict[int, list[TreeNode]] = defaultdict(list)
    roots: dict[int, TreeNode] = {}
    for req in waiting:
        node = req.last_node or root
        at_node[id(node)].append(req)
        while True:
            weight[id(node)] += 1
            parent = node.parent
            if parent is None:
                roots.setdefault(id(node), node)
                break
            if weight[id(node)] == 1:
                children[id(parent)].append(node)
            node = parent
    out: list[Req] = []
    stack = list(reversed(roots.values()))
    while stack:
        node = stack.pop()
        out.extend(at_node[id(node)])
        # heaviest child is popped first
        stack.extend(sorted(children[id(node)], key=lambda c: weight[id(c)]))
    return out
