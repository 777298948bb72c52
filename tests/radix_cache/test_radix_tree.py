from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from plait.radix_cache.memory_pool import TokenToKVPool
from plait.radix_cache.radix_tree import RadixCache, TreeNode


def make_cache(size: int = 64, disable: bool = False) -> RadixCache:
    return RadixCache(TokenToKVPool(size, 1, 1, 1, torch.float32), disable=disable)


def path_key(node: TreeNode, namespace: Hashable = None) -> list[int]:
    """Tokens from the root down to ``node``, checking each node is still attached and the
    root is ``namespace``'s."""
    parts = []
    while node.parent is not None:
        assert node.parent.children[node.key[0]] is node, f"{node} is detached"
        parts.append(node.key)
        node = node.parent
    if parts:
        assert node.namespace == namespace, f"under {node.namespace!r}, not {namespace!r}"
    return [t for part in reversed(parts) for t in part]


def cache_seq(cache: RadixCache, key: list[int], namespace: Hashable = None) -> torch.Tensor:
    """What the engine does for a finished request: match, allocate the rest, insert, free
    duplicates. Returns the tree's slots for ``key``."""
    m = cache.match_prefix(key, namespace=namespace)
    cache.inc_lock_ref(m.last_node)
    prefix_len = len(m.indices)
    own = cache.kv_pool.alloc(len(key) - prefix_len)
    assert own is not None
    value = torch.cat((m.indices, own))
    new_len = cache.insert(key, value, namespace=namespace)
    cache.kv_pool.free(value[prefix_len:new_len])
    cache.dec_lock_ref(m.last_node)
    return cache.match_prefix(key, namespace=namespace).indices


def free_set(cache: RadixCache) -> set[int]:
    return set(cache.kv_pool.free_slots.tolist())


def test_partial_match_splits_node() -> None:
    cache = make_cache()
    slots = cache_seq(cache, [1, 2, 3, 4, 5])
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.indices.tolist() == slots[:3].tolist()
    assert m.last_node.key == [1, 2, 3]
    assert [c.key for c in m.last_node.children.values()] == [[4, 5]]
    full = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert full.indices.tolist() == slots.tolist()
    assert full.last_node.parent is m.last_node
    assert cache.total_size() == 5
    cache.check_idle()


def test_match_on_long_keys_finds_first_mismatch() -> None:
    cache = make_cache(size=10_000)
    key = [i % 7 for i in range(5000)]
    slots = cache_seq(cache, key)
    for cut in (1, 63, 64, 65, 3001, 4999):
        query = key[:cut] + [99]
        m = cache.match_prefix(query)
        assert m.indices.tolist() == slots[:cut].tolist()
        assert path_key(m.last_node) == key[:cut]
    assert cache.match_prefix(key + [1, 2]).indices.tolist() == slots.tolist()
    cache.check_idle()


def test_insert_returns_length_already_cached() -> None:
    cache = make_cache()
    v = cache.kv_pool.alloc(3)
    assert cache.insert([1, 2, 3], v) == 0
    m = cache.match_prefix([1, 2, 3, 4, 5])
    own = cache.kv_pool.alloc(2)
    assert cache.insert([1, 2, 3, 4, 5], torch.cat((m.indices, own))) == 3
    # another request computed [1, 2, 9] without a cache hit: its slots for [1, 2] duplicate
    dup = cache.kv_pool.alloc(3)
    assert cache.insert([1, 2, 9], dup) == 2
    cache.kv_pool.free(dup[:2])
    assert cache.match_prefix([1, 2, 9]).indices.tolist() == v[:2].tolist() + dup[2:].tolist()
    assert cache.insert([1, 2], v[:2]) == 2
    assert cache.insert([], v[:0]) == 0
    cache.check_idle()


def test_insert_rejects_mismatched_value() -> None:
    cache = make_cache()
    with pytest.raises(ValueError, match="2 slots for 3 tokens"):
        cache.insert([1, 2, 3], torch.tensor([1, 2]))


def test_insert_keeps_its_own_copy_of_value() -> None:
    cache = make_cache()
    value = cache.kv_pool.alloc(3)
    expected = value.tolist()
    cache.insert([1, 2, 3], value)
    value.fill_(0)
    assert cache.match_prefix([1, 2, 3]).indices.tolist() == expected


def test_lock_moves_sizes_between_evictable_and_protected() -> None:
    cache = make_cache()
    cache_seq(cache, [1, 2, 3, 4])
    cache_seq(cache, [1, 2, 5])
    a = cache.match_prefix([1, 2, 3, 4]).last_node
    b = cache.match_prefix([1, 2, 5]).last_node
    assert cache.inc_lock_ref(a) == -4
    assert (cache.evictable_size(), cache.protected_size()) == (1, 4)
    assert cache.inc_lock_ref(a) == 0
    assert cache.inc_lock_ref(b) == -1
    assert (cache.evictable_size(), cache.protected_size()) == (0, 5)
    cache.check_invariant()
    assert cache.dec_lock_ref(a) == 0
    assert cache.dec_lock_ref(a) == 2
    assert (cache.evictable_size(), cache.protected_size()) == (2, 3)
    assert cache.dec_lock_ref(b) == 3
    assert cache.protected_size() == 0
    with pytest.raises(AssertionError):
        cache.dec_lock_ref(b)


def test_split_of_locked_node_keeps_the_lock() -> None:
    cache = make_cache()
    cache_seq(cache, [1, 2, 3, 4])
    node = cache.match_prefix([1, 2, 3, 4]).last_node
    cache.inc_lock_ref(node)
    upper = cache.match_prefix([1, 2, 7]).last_node
    assert upper.lock_ref == 1 and upper.key == [1, 2]
    assert cache.protected_size() == 4
    cache.dec_lock_ref(node)
    cache.check_idle()


def test_evict_is_lru_over_leaves() -> None:
    cache = make_cache()
    a = cache_seq(cache, [1, 1])
    b = cache_seq(cache, [2, 2])
    c = cache_seq(cache, [3, 3])
    cache.match_prefix([1, 1])  # a is now the most recent
    assert cache.evict(1) == 2
    assert free_set(cache) >= set(b.tolist())
    assert len(cache.match_prefix([2, 2]).indices) == 0
    assert cache.evict(2) == 2
    assert free_set(cache) >= set(c.tolist())
    assert cache.match_prefix([1, 1]).indices.tolist() == a.tolist()
    cache.check_idle()


def test_evict_removes_parents_that_become_leaves() -> None:
    cache = make_cache(size=16)
    cache_seq(cache, [1, 2, 3])
    cache_seq(cache, [1, 2, 4])
    assert cache.total_size() == 4
    assert cache.evict(100) == 4
    assert cache.total_size() == 0 and not cache.root.children
    assert cache.kv_pool.available_size() == 16
    assert cache.evict(1) == 0
    cache.check_idle()


def test_evict_never_frees_locked_nodes() -> None:
    cache = make_cache()
    kept = cache_seq(cache, [1, 2, 3])
    cache_seq(cache, [1, 2, 4, 5])
    cache_seq(cache, [6])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(node)
    assert cache.evict(100) == 3
    assert cache.evictable_size() == 0 and cache.protected_size() == 3
    assert not free_set(cache) & set(kept.tolist())
    assert cache.match_prefix([1, 2, 3]).indices.tolist() == kept.tolist()
    cache.check_invariant()
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3
    cache.check_idle()


def test_disabled_cache_stores_nothing() -> None:
    cache = make_cache(disable=True)
    value = cache.kv_pool.alloc(3)
    assert cache.insert([1, 2, 3], value) == 0
    m = cache.match_prefix([1, 2, 3])
    assert len(m.indices) == 0 and m.last_node is cache.root
    assert cache.inc_lock_ref(m.last_node) == 0
    assert cache.evict(10) == 0
    assert cache.total_size() == 0
    cache.check_invariant(num_in_use=3)
    cache.kv_pool.free(value)
    cache.check_idle()


def test_reset_frees_everything() -> None:
    cache = make_cache(size=16)
    cache_seq(cache, [1, 2, 3])
    cache_seq(cache, [1, 4])
    node = cache.match_prefix([1, 4]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(AssertionError, match="locked"):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and not cache.root.children
    assert cache.kv_pool.available_size() == 16
    cache.check_idle()


def test_check_invariant_reports_leaks_and_corruption() -> None:
    cache = make_cache(size=16)
    cache_seq(cache, [1, 2, 3])
    leaked = cache.kv_pool.alloc(2)
    with pytest.raises(AssertionError, match="KV accounting"):
        cache.check_invariant()
    cache.check_invariant(num_in_use=2)
    cache.kv_pool.free(leaked)
    node = cache.match_prefix([1, 2, 3]).last_node
    node.lock_ref = 1  # bypassing inc_lock_ref leaves the counters stale
    with pytest.raises(AssertionError, match="counter"):
        cache.check_invariant()
    node.lock_ref = 0
    node.value = node.value[:2]
    with pytest.raises(AssertionError, match="2 slots for 3 tokens"):
        cache.check_invariant()


def test_namespaces_share_nothing_but_share_within() -> None:
    cache = make_cache()
    a = cache_seq(cache, [1, 2, 3, 4, 5], namespace=("a", None))
    for other in [None, ("b", None), ("a", "salt")]:
        m = cache.match_prefix([1, 2, 3, 4, 5], namespace=other)
        assert len(m.indices) == 0 and m.last_node is cache.root
    m = cache.match_prefix([1, 2, 3, 9], namespace=("a", None))
    assert m.indices.tolist() == a[:3].tolist()
    # the same tokens in another namespace get slots of their own
    b = cache_seq(cache, [1, 2, 3, 4, 5], namespace=("b", None))
    assert not set(a.tolist()) & set(b.tolist())
    assert cache.total_size() == 10 and cache.num_namespaces() == 2
    assert cache.insert([1, 2, 3], a[:3], namespace=("a", None)) == 3
    cache.check_idle()


def test_a_namespace_is_dropped_with_its_last_entry() -> None:
    cache = make_cache(size=16)
    cache_seq(cache, [1, 2, 3], namespace="t1")
    m = cache.match_prefix([1, 2, 3, 4], namespace="t1")
    cache.inc_lock_ref(m.last_node)
    cache_seq(cache, [4, 5], namespace="t2")
    assert cache.evict(100) == 2  # t1's prefix is locked
    assert cache.num_namespaces() == 1
    cache.dec_lock_ref(m.last_node)
    assert cache.evict(100) == 3 and cache.num_namespaces() == 0
    cache.check_idle()
    assert cache.kv_pool.available_size() == 16
    cache_seq(cache, [1, 2], namespace="t1")  # a new root for the namespace
    cache.reset()
    assert cache.num_namespaces() == 0 and cache.total_size() == 0
    cache.check_idle()


@dataclass
class Running:
    namespace: Hashable
    key: list[int]
    prefix_len: int
    value: torch.Tensor  # [len(key)]: the matched prefix's slots, then the request's own
    last_node: TreeNode


POOL_SIZE = 40
keys = st.lists(st.integers(0, 3), max_size=10)
namespaces = st.sampled_from([None, "tenant-a", ("tenant-b", "salt")])


class RadixCacheMachine(RuleBasedStateMachine):
    """Drives the cache the way the engine does, against a reference map from every cached
    (namespace, prefix) to the slot of its last token."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = make_cache(size=POOL_SIZE)
        self.pool = self.cache.kv_pool
        self.ref: dict[tuple[Hashable, tuple[int, ...]], int] = {}
        self.running: list[Running] = []
        self.locks: list[tuple[TreeNode, Hashable, list[int], list[int]]] = []

    def in_use(self) -> int:
        return sum(len(r.key) - r.prefix_len for r in self.running)

    def cached_len(self, ns: Hashable, key: list[int]) -> int:
        n = 0
        while n < len(key) and (ns, tuple(key[: n + 1])) in self.ref:
            n += 1
        return n

    def slots(self, ns: Hashable, key: list[int]) -> list[int]:
        return [self.ref[ns, tuple(key[: i + 1])] for i in range(len(key))]

    def match(self, ns: Hashable, key: list[int]) -> tuple[TreeNode, list[int]]:
        m = self.cache.match_prefix(key, namespace=ns)
        n = self.cached_len(ns, key)
        assert m.indices.tolist() == self.slots(ns, key[:n])
        assert path_key(m.last_node, ns) == key[:n]
        return m.last_node, m.indices.tolist()

    def lock(self, node: TreeNode) -> None:
        before = self.cache.evictable_size()
        delta = self.cache.inc_lock_ref(node)
        assert self.cache.evictable_size() == before + delta

    def unlock(self, node: TreeNode) -> None:
        before = self.cache.evictable_size()
        delta = self.cache.dec_lock_ref(node)
        assert self.cache.evictable_size() == before + delta

    def evict(self, n: int) -> None:
        free_before, evictable_before = free_set(self.cache), self.cache.evictable_size()
        evicted = self.cache.evict(n)
        freed = free_set(self.cache) - free_before
        assert len(freed) == evicted
        assert evicted >= min(n, evictable_before)
        assert self.cache.evictable_size() == evictable_before - evicted
        gone = [p for p, slot in self.ref.items() if slot in freed]
        assert len(gone) == evicted, "evict freed slots the tree did not hold"
        for p in gone:
            del self.ref[p]
        assert all(len(p) == 1 or (ns, p[:-1]) in self.ref for ns, p in self.ref), (
            "evicted an inner node"
        )

    @rule(ns=namespaces, key=keys)
    def start_request(self, ns: Hashable, key: list[int]) -> None:
        node, prefix = self.match(ns, key)
        self.lock(node)
        need = len(key) - len(prefix)
        if self.pool.available_size() < need:
            self.evict(need - self.pool.available_size())
        own = self.pool.alloc(need)
        if own is None:
            self.unlock(node)
            return
        value = torch.cat((torch.tensor(prefix, dtype=torch.int64), own))
        self.running.append(Running(ns, key, len(prefix), value, node))

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 99))
    def finish_request(self, i: int) -> None:
        req = self.running.pop(i % len(self.running))
        expected = self.cached_len(req.namespace, req.key)
        assert expected >= req.prefix_len, "a locked prefix was evicted"
        new_len = self.cache.insert(req.key, req.value, namespace=req.namespace)
        assert new_len == expected
        self.pool.free(req.value[req.prefix_len : new_len])
        for j in range(new_len, len(req.key)):
            self.ref[req.namespace, tuple(req.key[: j + 1])] = int(req.value[j])
        self.unlock(req.last_node)

    @rule(ns=namespaces, key=keys)
    def lock_prefix(self, ns: Hashable, key: list[int]) -> None:
        node, prefix = self.match(ns, key)
        self.lock(node)
        self.locks.append((node, ns, key[: len(prefix)], prefix))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 99))
    def unlock_prefix(self, i: int) -> None:
        node, _, _, _ = self.locks.pop(i % len(self.locks))
        self.unlock(node)

    @rule(ns=namespaces, key=keys)
    def match_prefix(self, ns: Hashable, key: list[int]) -> None:
        self.match(ns, key)

    @rule(n=st.integers(0, POOL_SIZE + 5))
    def evict_tokens(self, n: int) -> None:
        self.evict(n)

    @precondition(lambda self: not self.running and not self.locks)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.ref.clear()
        assert self.pool.available_size() == POOL_SIZE

    @invariant()
    def accounting_holds(self) -> None:
        self.cache.check_invariant(num_in_use=self.in_use())
        assert self.cache.total_size() == len(self.ref)
        # a namespace's root lives exactly as long as it caches something
        assert self.cache.num_namespaces() == len({ns for ns, _ in self.ref if ns is not None})
        if not self.running and not self.locks:
            self.cache.check_idle()

    @invariant()
    def locked_prefixes_stay_cached(self) -> None:
        free = free_set(self.cache)
        held = [
            (r.last_node, r.namespace, r.key[: r.prefix_len], r.value[: r.prefix_len].tolist())
            for r in self.running
        ]
        for node, ns, key, slots in held + self.locks:
            assert node.lock_ref > 0
            assert path_key(node, ns) == key
            assert self.slots(ns, key) == slots
            assert not free & set(slots)


RadixCacheMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_radix_cache_machine = RadixCacheMachine.TestCase
