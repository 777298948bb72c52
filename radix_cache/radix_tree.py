"""RadixAttention's prefix cache: a radix tree from token-id prefixes to the KV slots holding them."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from plait.radix_cache.memory_pool import TokenToKVPool

_node_ids = itertools.count()
# a logical clock: ties are impossible and LRU order is reproducible, unlike wall time
_access_clock = itertools.count(1)
# slice compares run in C; a per-token Python loop only covers the last mismatching chunk
_MATCH_CHUNK = 64


class TreeNode:
    __slots__ = (
        "id",
        "children",
        "parent",
        "key",
        "value",
        "lock_ref",
        "last_access_time",
        "namespace",
    )

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: TreeNode | None = None,
        last_access_time: float = 0.0,
    ) -> None:
        self.id = next(_node_ids)
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access_time = last_access_time
        self.namespace: Hashable = None  # set on a namespace's root only

    def __repr__(self) -> str:
        head = self.key[:8]
        more = "..." if len(self.key) > 8 else ""
        return f"TreeNode(id={self.id}, key={head}{more} len={len(self.key)}, lock_ref={self.lock_ref})"


@dataclass(slots=True)
class MatchResult:
    indices: torch.Tensor  # int64 [prefix_len]: KV slots of the matched prefix
    last_node: TreeNode  # deepest matched node; a root when nothing matched


def _key_match(node_key: list[int], key: list[int], start: int, end: int) -> int:
    """Length of the common prefix of ``node_key`` and ``key[start:end]``."""
    n = min(len(node_key), end - start)
    i = 0
    while i < n:
        j = min(i + _MATCH_CHUNK, n)
        if node_key[i:j] != key[start + i : start + j]:
            while node_key[i] == key[start + i]:
                i += 1
            return i
        i = j
    return n


class RadixCache:
    """Maps token-id prefixes to the KV slots that hold their keys and values.

    Invariants:
    - Every slot in the tree is owned by the tree: it is in no request's private allocation
      and not in the pool's free list. ``evict`` and ``reset`` are the only paths that free it.
    - A node must be locked (``inc_lock_ref``) while a request uses its slots; a lock on a node
      also holds every ancestor. ``evict`` never frees a locked node (nor the root).
    - Each non-root node's tokens count once: in ``protected_size`` when ``lock_ref > 0``, in
      ``evictable_size`` otherwise. When nothing runs,
      ``kv_pool.available_size() + evictable_size() == kv_pool.size``.
    - ``children`` is keyed by the first token of the child's key; siblings never share it.
    - ``version`` changes whenever the set of cached prefixes does (an ``insert`` that adds
      tokens, an ``evict`` that frees some, ``reset``). While it is unchanged an earlier
      ``match_prefix`` result stays exact: same slots, and its ``last_node`` still ends at the
      match (a split puts a new node above it, never below).
    - Namespaces: every prefix lives in one namespace, ``None`` (the shared tree under
      ``root``) or any other hashable (a tenant and its cache salt, say), which has its own
      root. ``match_prefix`` and ``insert`` stay inside the caller's namespace, so what one
      namespace cached is never a hit in another, however equal the tokens. A namespace's
      root holds no tokens and no slots, has no parent, stays locked like ``root``, and
      exists only while it has children (``evict`` drops it when its last leaf goes), so
      client-chosen namespaces cost nothing once their entries are evicted.

    With ``disable=True`` nothing is ever stored: matches are empty and ``insert`` keeps
    nothing (the caller frees all its slots itself).
    """

    def __init__(self, kv_pool: TokenToKVPool, disable: bool = False) -> None:
        self.kv_pool = kv_pool
        self.disable = disable
        self._empty = torch.empty(0, dtype=torch.int64, device=kv_pool.device)
        self.version = 0
        self._init_root()

    def reset(self) -> None:
        """Drops every cached prefix and frees its slots. Only valid when nothing is locked."""
        assert self._protected == 0, f"reset with {self._protected} locked tokens in use"
        values = [node.value for node in self._nodes() if node.parent is not None]
        if values:
            self.kv_pool.free(torch.cat(values))
        self.version += 1
        self._init_root()

    def _init_root(self) -> None:
        self.root = self._new_root(None)
        self._ns_roots: dict[Hashable, TreeNode] = {}
        self._evictable = 0
        self._protected = 0

    def _new_root(self, namespace: Hashable) -> TreeNode:
        root = TreeNode([], self._empty, last_access_time=next(_access_clock))
        root.lock_ref = 1
        root.namespace = namespace
        return root

    def _root_of(self, namespace: Hashable) -> TreeNode | None:
        return self.root if namespace is None else self._ns_roots.get(namespace)

    def match_prefix(
        self, key: Sequence[int], end: int | None = None, namespace: Hashable = None
    ) -> MatchResult:
        """The longest prefix of ``key[:end]`` (``end`` spares the caller a slice) cached in
        ``namespace``. A match ending inside a node splits it, so ``last_node`` covers exactly
        the match (``root`` when the namespace holds nothing). The result is not locked: lock
        ``last_node`` before the slots can be evicted (before the next ``evict``)."""
        root = None if self.disable else self._root_of(namespace)
        if root is None:
            return MatchResult(self._empty, self.root)
        key = key if isinstance(key, list) else list(key)
        node, pos, values = self._walk(root, key, len(key) if end is None else min(end, len(key)))
        indices = torch.cat(values) if values else self._empty
        return MatchResult(indices, node)

    def insert(
        self,
        key: Sequence[int],
        value: torch.Tensor,
        end: int | None = None,
        namespace: Hashable = None,
    ) -> int:
        """Caches ``value[t]`` as the KV slot of ``key[t]`` in ``namespace`` for the tokens of
        ``key[:end]`` (``end`` spares the caller a slice); returns how many leading tokens of
        them were already cached there before the call.

        The tree keeps (a copy of) ``value[returned:]`` and from then on owns those slots. For
        the already cached positions the tree keeps its own slots; the caller's slots there
        that are not the tree's are duplicates the caller must free. For a caller that matched
        ``prefix_len`` tokens (and kept that node locked so they could not be evicted) and
        allocated the rest, those are exactly ``value[prefix_len:returned]``. The cache never
        frees any of the caller's ``value``.
        """
        end = len(key) if end is None else min(end, len(key))
        if len(value) != end:
            raise ValueError(f"insert: value has {len(value)} slots for {end} tokens")
        if self.disable or end == 0:
            return 0
        key = key if isinstance(key, list) else list(key)
        root = self._root_of(namespace)
        if root is None:
            root = self._ns_roots[namespace] = self._new_root(namespace)
        node, pos, _ = self._walk(root, key, end)
        if pos < end:
            leaf = TreeNode(key[pos:end], value[pos:].clone(), node, node.last_access_time)
            node.children[key[pos]] = leaf
            self._evictable += len(leaf.key)
            self.version += 1
        return pos

    def _walk(
        self, root: TreeNode, key: list[int], end: int
    ) -> tuple[TreeNode, int, list[torch.Tensor]]:
        # deepest node below root matching a prefix of key[:end] (split to end exactly there),
        # the matched length and the matched nodes' values; refreshes access times on the path
        now = next(_access_clock)
        node = root
        node.last_access_time = now
        pos = 0
        values: list[torch.Tensor] = []
        while pos < end:
            child = node.children.get(key[pos])
            if child is None:
                break
            child.last_access_time = now
            m = _key_match(child.key, key, pos, end)
            split = m < len(child.key)
            if split:
                child = self._split_node(child, m)
            values.append(child.value)
            node = child
            pos += m
            if split:
                break
        return node, pos, values

    def _split_node(self, child: TreeNode, k: int) -> TreeNode:
        # parent -> child becomes parent -> new (key[:k]) -> child (key[k:]); the new node
        # inherits the lock, so sizes are unchanged
        parent = child.parent
        assert parent is not None and 0 < k < len(child.key)
        new = TreeNode(child.key[:k], child.value[:k], parent, child.last_access_time)
        new.lock_ref = child.lock_ref
        new.children[child.key[k]] = child
        parent.children[child.key[0]] = new
        child.parent = new
        child.key = child.key[k:]
        child.value = child.value[k:]
        return new

    def touch(self, node: TreeNode) -> None:
        """Refreshes the access time of ``node``'s path, as matching up to it again would."""
        now = next(_access_clock)
        while node is not None:
            node.last_access_time = now
            node = node.parent

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Locks ``node`` and its ancestors; returns the change in evictable size (<= 0)."""
        delta = 0
        while node.parent is not None:
            if node.lock_ref == 0:
                n = len(node.key)
                self._evictable -= n
                self._protected += n
                delta -= n
            node.lock_ref += 1
            node = node.parent
        return delta

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Undoes one ``inc_lock_ref(node)``; returns the change in evictable size (>= 0)."""
        delta = 0
        while node.parent is not None:
            assert node.lock_ref > 0, f"dec_lock_ref below zero at {node}"
            if node.lock_ref == 1:
                n = len(node.key)
                self._evictable += n
                self._protected -= n
                delta += n
            node.lock_ref -= 1
            node = node.parent
        return delta

    def evict(self, num_tokens: int, namespaces: Callable[[Hashable], bool] | None = None) -> int:
        """Frees least-recently-used unlocked leaves until ``num_tokens`` tokens are freed or
        nothing evictable is left; returns the number of tokens freed (may exceed the ask).
        ``namespaces`` limits it to the namespaces it accepts."""
        if self.disable or num_tokens <= 0:
            return 0
        roots = self.roots()
        if namespaces is not None:
            roots = [r for r in roots if namespaces(r.namespace)]
        heap = [
            (node.last_access_time, node.id, node)
            for node in self._nodes(roots)
            if not node.children and node.lock_ref == 0
        ]
        heapq.heapify(heap)
        freed: list[torch.Tensor] = []
        evicted = 0
        while evicted < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            del parent.children[node.key[0]]
            freed.append(node.value)
            evicted += len(node.key)
            if parent.children:
                continue
            if parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
            elif parent.parent is None and parent is not self.root:
                del self._ns_roots[parent.namespace]
        self._evictable -= evicted
        if freed:
            self.kv_pool.free(torch.cat(freed))
            self.version += 1
        return evicted

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        """Tokens (= slots) held by the tree."""
        return self._evictable + self._protected

    def num_namespaces(self) -> int:
        """Namespaces holding at least one prefix, besides the shared one."""
        return len(self._ns_roots)

    def roots(self) -> list[TreeNode]:
        """``root`` and every namespace's root (parentless, permanently locked, no tokens)."""
        return [self.root, *self._ns_roots.values()]

    def _nodes(self, roots: list[TreeNode] | None = None) -> list[TreeNode]:
        out, stack = [], self.roots() if roots is None else list(roots)
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def check_invariant(self, num_in_use: int = 0) -> None:
        """Asserts the tree's structure and the slot accounting, where ``num_in_use`` slots
        are owned by running requests outside the tree. Walks the whole tree: for tests and
        idle checks, not the hot path."""
        assert self.root.lock_ref >= 1, "root must stay locked"
        evictable = protected = 0
        values = []
        for node in self._nodes():
            assert len(node.value) == len(node.key), (
                f"{node}: {len(node.value)} slots for {len(node.key)} tokens"
            )
            assert node.lock_ref >= 0, f"{node}: negative lock_ref"
            child_locks = 0
            for first, child in node.children.items():
                assert child.key, f"{child}: empty key below {node}"
                assert child.key[0] == first, f"{child} filed under token {first}"
                assert child.parent is node, f"{child}: wrong parent"
                child_locks += child.lock_ref
            if node.parent is None:
                assert not node.key and node.lock_ref >= 1, f"{node}: a root must stay locked"
                if node is not self.root:
                    assert self._ns_roots.get(node.namespace) is node, f"{node}: stray root"
                    assert node.children, f"{node}: empty namespace kept"
                continue
            assert node.lock_ref >= child_locks, f"{node}: fewer locks than its children hold"
            values.append(node.value)
            if node.lock_ref > 0:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        assert evictable == self._evictable, (
            f"evictable counter {self._evictable} but the tree holds {evictable} unlocked tokens"
        )
        assert protected == self._protected, (
            f"protected counter {self._protected} but the tree holds {protected} locked tokens"
        )
        slots = torch.cat(values) if values else self._empty
        assert len(slots.unique()) == len(slots), "a KV slot appears twice in the tree"
        assert not bool((slots == 0).any()), "the dummy slot 0 is in the tree"
        assert not bool(torch.isin(slots, self.kv_pool.free_slots).any()), (
            "a slot held by the tree is also in the pool's free list"
        )
        available = self.kv_pool.available_size()
        assert available + evictable + protected + num_in_use == self.kv_pool.size, (
            f"KV accounting: available {available} + evictable {evictable} + protected "
            f"{protected} + in use {num_in_use} != pool size {self.kv_pool.size}"
        )

    def check_idle(self) -> None:
        """Asserts the idle invariant: nothing locked and ``available + evictable == size``."""
        assert self._protected == 0, f"{self._protected} tokens still locked while idle"
        self.check_invariant(num_in_use=0)

    def pretty_print(self) -> None:
        stack = [(root, 0) for root in self.roots()]
        while stack:
            node, depth = stack.pop()
            print("  " * depth + repr(node))
            stack.extend((child, depth + 1) for child in node.children.values())
        print(repr(self))

    def __repr__(self) -> str:
        return (
            f"RadixCache(nodes={len(self._nodes()) - len(self.roots())}, evictable={self._evictable}, "
            f"protected={self._protected}, disable={self.disable})"
        )
