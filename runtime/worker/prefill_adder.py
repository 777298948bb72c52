"""Admission of waiting requests into one prefill batch under token budgets."""

from __future__ import annotations

from plait.radix_cache.cache_manager import CacheManager
from plait.runtime.worker.request import Req

# Decode room reserved per request is capped: a request asking for 100k tokens should not
# block admission as if it would surely use them all.
CLIP_MAX_NEW_TOKENS = 4096


class PrefillAdder:
    """Builds one extend batch.

    Budgets: ``rem_total`` = free + evictable slots minus the decode room reserved for running
    requests (scaled by ``new_token_ratio``); ``rem_input`` = prefill tokens per forward (only
    the batch's first request may overrun it, or a longer prompt could never run); ``rem_chunk``
    = the chunked-prefill size. Decode tokens mixed into the same forward (``mixed_decodes``)
    count against the prefill and chunk budgets. A request that does not fit ``rem_chunk`` is
    truncated and becomes the single chunked request. An admitted request's prefix is locked.
    """

    def __init__(
        self,
        kv: CacheManager,
        running: list[Req],
        new_token_ratio: float,
        max_prefill_tokens: int,
        chunked_prefill_size: int | None,
        mixed_decodes: int = 0,
    ) -> None:
        self.kv = kv
        reserved = sum(
            min(r.remaining_new_tokens(), CLIP_MAX_NEW_TOKENS) * new_token_ratio for r in running
        )
        self.rem_total = kv.available_size() + kv.evictable_size() - reserved
        self.rem_input = max_prefill_tokens - mixed_decodes
        self.rem_chunk = (
            None if chunked_prefill_size is None else chunked_prefill_size - mixed_decodes
        )
        self.nothing_running = not running
        self.can_run: list[Req] = []
        self.new_chunked_req: Req | None = None

    def add_chunked(self, req: Req) -> None:
        """Continues the request chunked last round (its row and prefix are already held), with
        as many tokens as memory allows; with none, it stays the chunked request and waits."""
        remaining = req.seq_len - req.kv_len
        budget = int(self.rem_total)
        if budget <= 0:
            self.new_chunked_req = req
            return
        req.extend_len = min(self._chunk_len(remaining), budget)
        self.rem_total -= req.extend_len
        self.rem_input -= req.extend_len
        if self.rem_chunk is not None:
            self.rem_chunk -= req.extend_len
        self.can_run.append(req)
        if req.extend_len < remaining:
            self.new_chunked_req = req

    def add_one(self, req: Req) -> bool:
        """Tries to admit ``req``; False means the batch is full and admission should stop."""
        if self.new_chunked_req is not None or self.rem_input <= 0:
            return False
        if self.rem_chunk is not None and self.rem_chunk <= 0:
            return False
        extend = req.seq_len - len(req.prefix_indices)
        if self.can_run and self._chunk_len(extend) > self.rem_input:
            return False  # only a batch's first request may overrun max_prefill_tokens
        decode_room = min(req.remaining_new_tokens(), CLIP_MAX_NEW_TOKENS)
        first_alone = self.nothing_running and not self.can_run
        # Alone in an idle engine, a request only needs room for its prompt: decode grows
        # into whatever the tree can give back.
        need = extend + (1 if first_alone else decode_room)
        lock_cost = -self.kv.lock(req)  # its prefix stops being evictable
        if need + lock_cost > self.rem_total:
            self.kv.unlock(req)
            return False
        self.rem_total -= need + lock_cost
        req.extend_len = self._chunk_len(extend)
        self.rem_input -= req.extend_len
        if self.rem_chunk is not None:
            self.rem_chunk -= req.extend_len
        self.can_run.append(req)
        if req.extend_len < extend:
            self.new_chunked_req = req
        return True

    def _chunk_len(self, extend: int) -> int:
        if self.rem_chunk is None:
            return extend
        return max(1, min(extend, self.rem_chunk))
