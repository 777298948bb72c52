"""The attention interface every model layer calls."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    """Attention over the paged KV pool.

    Invariants:
    - ``init_forward_metadata`` is called once per forward, before any layer; whatever it derives
      from the batch (gather indices, masks, split plans) is shared by all layers.
    - ``forward`` first stores the new tokens' ``k``/``v`` into the pool at
      ``batch.out_cache_loc``, then computes, for each new token of request i at position p,
      softmax(q · K[0..p]ᵀ · scale) · V[0..p] over request i's KV read through
      ``req_to_token`` (causal, grouped-query: query head h reads KV head h // (Hq / Hkv)).
    - Every output row is written; the output has shape ``[N, Hq * D]`` and the dtype of ``q``.
    """

    @abstractmethod
    def init_forward_metadata(self, batch: ForwardBatch) -> None: ...

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [N, Hq, D]
        k: torch.Tensor,  # [N, Hkv, D]
        v: torch.Tensor,  # [N, Hkv, D]
        layer_id: int,
        kv_pool: TokenToKVPool,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor: ...
