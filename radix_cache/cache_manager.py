"""A request's view of KV memory: prefix reuse, slot allocation with eviction, and caching."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import torch

from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.radix_cache.radix_tree import RadixCache

if TYPE_CHECKING:  # the worker's request type; the cache does not import the worker
    from plait.runtime.worker.request import Req


class CacheManager:
    """Owns the request-to-token table, the KV slot pool and the radix tree over them.

    Accounting invariant: every usable slot is exactly one of free, held by the tree (evictable
    when unlocked, protected when locked) or owned by a running request. When the engine is
    idle no request owns slots and nothing is locked: ``free + evictable == total``.

    Isolation: a request reuses only prefixes cached under its namespace (``namespace_of``):
    its ``cache_salt``, and with ``isolate_tenants`` its ``tenant`` too. Requests of one
    namespace share prefixes as before (a shared system prompt, ``select`` choices, forks).
    """

    def __init__(
        self,
        req_to_token_pool: ReqToTokenPool,
        kv_pool: TokenToKVPool,
        disable_radix_cache: bool = False,
        isolate_tenants: bool = False,
    ) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.kv_pool = kv_pool
        self.tree = RadixCache(kv_pool, disable=disable_radix_cache)
        self.disabled = disable_radix_cache
        self.isolate_tenants = isolate_tenants

    def namespace_of(self, req: Req) -> Hashable:
        """The radix tree namespace of ``req``'s prefixes: None (shared by every request)
        unless it has a cache salt or, under tenant isolation, a tenant."""
        tenant = req.tenant if self.isolate_tenants else None
        if tenant is None and req.cache_salt is None:
            return None
        return (tenant, req.cache_salt)

    @property
    def req_to_token(self) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token

    def available_size(self) -> int:
        return self.kv_pool.available_size()

    def evictable_size(self) -> int:
        return self.tree.evictable_size()

    def total_size(self) -> int:
        return self.kv_pool.size

    def match(self, req: Req) -> None:
        """Sets ``req.prefix_indices`` / ``req.last_node`` to the longest reusable cached prefix
        (unlocked: the caller locks it on admission). When neither the tree (its ``version``)
        nor the request's key changed since its last match, that result is exact and is kept:
        only its path's access time is refreshed, as a rematch would."""
        if self.disabled:
            req.prefix_indices, req.last_node = self.kv_pool.alloc(0), self.tree.root
            return
        tree, end = self.tree, req.max_prefix_len
        if req.match_version == tree.version and req.match_len == end:
            assert req.last_node is not None
            tree.touch(req.last_node)
            return
        res = tree.match_prefix(req.fill_ids, end, self.namespace_of(req))
        req.prefix_indices, req.last_node = res.indices, res.last_node
        req.match_version, req.match_len = tree.version, end

    def lock(self, req: Req) -> int:
        """Locks the request's matched prefix; returns the change in evictable tokens."""
        return self.tree.inc_lock_ref(req.last_node)

    def unlock(self, req: Req) -> None:
        """Undoes ``lock`` for a request that was not admitted after all."""
        self.tree.dec_lock_ref(req.last_node)

    def alloc_row(self, req: Req) -> None:
        """Gives the request a table row holding its locked prefix."""
        row = self.req_to_token_pool.alloc()
        assert row is not None, "admission must keep the number of rows below the pool size"
        req.req_pool_idx = row
        n = len(req.prefix_indices)
        self.req_to_token[row, :n] = req.prefix_indices
        req.kv_len = n
        req.cached_tokens = max(req.cached_tokens, n)

    def alloc_tokens(self, n: int) -> torch.Tensor | None:
        """``n`` free slots, evicting unlocked tree leaves (LRU) when needed; None if even that
        is not enough."""
        if self.kv_pool.available_size() < n:
            self.tree.evict(n - self.kv_pool.available_size())
        return self.kv_pool.alloc(n)

    def cache_unfinished(self, req: Req) -> None:
        """After a prefill (or chunk): hands the computed KV to the tree and re-locks, so other
        requests can reuse it while this one keeps decoding."""
        if self.disabled:
            return
        row, n = req.req_pool_idx, req.kv_len
        slots = self.req_to_token[row, :n].clone()
        namespace = self.namespace_of(req)
        cached = self.tree.insert(req.fill_ids, slots, n, namespace)
        self._free_duplicates(slots, len(req.prefix_indices), cached)
        res = self.tree.match_prefix(req.fill_ids, n, namespace)
        assert len(res.indices) == n, "the tree must hold what was just inserted"
        self.req_to_token[row, :n] = res.indices
        self.tree.dec_lock_ref(req.last_node)
        self.tree.inc_lock_ref(res.last_node)
        req.prefix_indices, req.last_node = res.indices, res.last_node

    def release(self, req: Req) -> None:
        """Finish or retract: the computed KV goes to the tree (or back to the pool when the
        cache is disabled), the lock and the row are released. Leaves ``req`` with no KV."""
        row, n = req.req_pool_idx, req.kv_len
        assert row is not None
        slots = self.req_to_token[row, :n].clone()
        if self.disabled:
            self.kv_pool.free(slots)
        else:
            cached = self.tree.insert(req.fill_ids, slots, n, self.namespace_of(req))
            self._free_duplicates(slots, len(req.prefix_indices), cached)
            self.tree.dec_lock_ref(req.last_node)
        self.req_to_token_pool.free(row)
        req.req_pool_idx, req.last_node, req.kv_len = None, None, 0
        req.prefix_indices, req.match_version = slots[:0], -1

    def _free_duplicates(self, slots: torch.Tensor, owned_from: int, cached: int) -> None:
        # positions [owned_from, cached) were computed by this request but the tree already
        # held them (another request inserted the same tokens meanwhile)
        if cached > owned_from:
            self.kv_pool.free(slots[owned_from:cached])

    def flush(self) -> None:
        """Drops every cached prefix. Only valid when no request holds KV."""
        self.tree.reset()

    def flush_tenant(self, tenant: str) -> int:
        """Drops what ``tenant`` cached under tenant isolation (every salt of it) but the
        prefixes its running requests hold; valid any time. Returns the tokens freed."""
        assert self.isolate_tenants, "without tenant isolation prefixes have no tenant"
        return self.tree.evict(
            self.tree.total_size(), lambda ns: isinstance(ns, tuple) and ns[0] == tenant
        )

    def check_idle(self) -> None:
        """Asserts the idle invariant: nothing locked, no rows in use, free + evictable == total."""
        assert self.req_to_token_pool.available_size() == self.req_to_token_pool.size, (
            "request rows still in use"
        )
        free, evictable = self.kv_pool.available_size(), self.tree.evictable_size()
        assert free + evictable == self.kv_pool.size, (
            f"KV leak: free {free} + evictable {evictable} != total {self.kv_pool.size}"
        )
        self.tree.check_idle()
