"""Which waiting requests to prefill first: lpm, fcfs, dfs-weight, sjf (learned ranking),
random; with priority classes and fair sharing between tenants layered over any of them."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator
from typing import Protocol

from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.radix_tree import TreeNode
from plait.runtime.worker.request import Req
from plait.runtime.worker.tenant_fairness import VirtualTokenCounters

POLICIES = ("lpm", "fcfs", "dfs-weight", "sjf", "random")
# Policies that reorder by something other than arrival or the cache, so a request can be
# passed over indefinitely: the starvation bound promotes it (Fu et al. 2024, section 4).
_STARVING_POLICIES = ("sjf", "random")


class LengthScorer(Protocol):
    """Anything that scores a request's expected output length (larger = longer)."""

    def score(self, req: Req) -> float: ...


class RankerScorer:
    """``LengthRanker`` over a request's prompt ids (the prompt, not the outputs: a retracted
    request keeps its first score)."""

    def __init__(self, ranker: object) -> None:
        self.ranker = ranker

    def score(self, req: Req) -> float:
        return self.ranker.score_ids(req.input_ids)  # type: ignore[attr-defined]


class PriorityOrder:
    """Priority classes (SGLang's convention): a larger ``priority`` is more urgent unless
    ``low_values_first``; ``None`` counts as 0."""

    def __init__(self, low_values_first: bool = False) -> None:
        self.low_values_first = low_values_first

    def urgency(self, req: Req) -> int:
        """Larger is more urgent, whatever the configured direction."""
        p = req.priority or 0
        return -p if self.low_values_first else p


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
    the queue order and match a request only when the caller reaches it (unless a layer below
    reorders it: then every request is matched first, as for lpm).

    Layers, outermost first, each keeping the order of the next inside its groups: priority
    classes (``priority``), then requests queued ``starvation_steps`` or more (sjf, random;
    promoted in arrival order), then tenants interleaved by their virtual token counters
    (``fair``), then the base policy. sjf orders by ``scorer`` (shortest expected first).
    """

    def __init__(
        self,
        policy: str,
        kv: CacheManager,
        *,
        priority: PriorityOrder | None = None,
        fair: VirtualTokenCounters | None = None,
        scorer: LengthScorer | None = None,
        starvation_steps: int = 256,
        seed: int = 0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {policy!r}")
        if policy == "sjf" and scorer is None:
            raise ValueError("the sjf policy needs a length scorer")
        self.kv = kv
        # without a tree, the prefix-aware policies have nothing to go on
        cache_aware = policy in ("lpm", "dfs-weight")
        self.policy = "fcfs" if kv.disabled and cache_aware else policy
        self.priority = priority
        self.fair = fair
        self.scorer = scorer
        self.starvation_steps = starvation_steps
        self.rng = random.Random(seed)

    def order(self, waiting: list[Req], step: int = 0) -> tuple[Iterable[Req], set[int]]:
        """The queue in priority order and the ids of requests deferred this round (in-batch
        prefix duplicates, which the order also yields). When the order is lazy (see the class
        docstring) ``deferred`` holds the ids of the requests yielded so far. ``step`` is the
        scheduler's step count, against which ``Req.queued_step`` measures waiting."""
        deferred: set[int] = set()
        layered = self.priority is not None or self.fair is not None
        lazy = self.policy == "fcfs" or (self.policy == "lpm" and len(waiting) > _LPM_MAX_QUEUE)
        if lazy and not layered:
            return self._matched_in_order(waiting, deferred), deferred
        for req in waiting:
            self.kv.match(req)
        seen: set[tuple[Hashable, tuple[int, ...]]] = set()
        deferred.update(id(req) for req in waiting if self._is_duplicate(req, seen))
        ordered = list(waiting) if lazy else self._base_order(waiting)
        if self.fair is not None:
            ordered = self.fair.interleave(ordered)
        if self.policy in _STARVING_POLICIES:
            starved = [r for r in waiting if step - r.queued_step >= self.starvation_steps]
            if starved:
                starved.sort(key=lambda r: r.queued_step)
                ids = {id(r) for r in starved}
                ordered = starved + [r for r in ordered if id(r) not in ids]
        if self.priority is not None:
            urgency = self.priority.urgency
            ordered.sort(key=lambda r: -urgency(r))  # stable: the layers above stay in order
        return ordered, deferred

    def _base_order(self, waiting: list[Req]) -> list[Req]:
        if self.policy == "lpm":
            return sorted(waiting, key=lambda r: -len(r.prefix_indices))
        if self.policy == "dfs-weight":
            return _dfs_weight(waiting, self.kv.tree.root)
        if self.policy == "sjf":
            for req in waiting:
                if req.length_score is None:
                    req.length_score = self.scorer.score(req)  # type: ignore[union-attr]
            return sorted(waiting, key=lambda r: r.length_score)  # type: ignore[arg-type,return-value]
        if self.policy == "random":
            out = list(waiting)
            self.rng.shuffle(out)
            return out
        return list(waiting)

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
