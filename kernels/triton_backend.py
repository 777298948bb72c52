"""Attention over the paged KV pool with Triton kernels: the GPU path."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.kernels.attention_backend import AttentionBackend
from plait.kernels.triton_decode import (
    DecodeBuffers,
    alloc_decode_buffers,
    choose_num_splits,
    decode_attention,
)
from plait.kernels.triton_extend import extend_attention
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode


@dataclass(slots=True)
class ExtendMetadata:
    prefix_lens: torch.Tensor  # [B]
    extend_lens: torch.Tensor  # [B]
    extend_starts: torch.Tensor  # [B] first flat token of each request
    max_extend_len: int


class TritonAttentionBackend(AttentionBackend):
    """Extend runs one causal flash-attention kernel over prefix and new tokens through
    ``req_to_token``; decode runs flash-decoding (split-KV, merged by log-sum-exp).

    New K/V go into the pool with the pool's indexed copy (``set_kv``): one coalesced scatter per
    tensor, which the kernels then read back like any cached token.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        assert num_heads % num_kv_heads == 0
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self._num_sms: int | None = None

    def _sm_count(self, device: torch.device) -> int:
        if self._num_sms is None:
            if device.type == "cuda":
                self._num_sms = torch.cuda.get_device_properties(device).multi_processor_count
            else:
                self._num_sms = 4
        return self._num_sms

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        device = batch.seq_lens.device
        if batch.mode == ForwardMode.DECODE:
            splits = choose_num_splits(
                max(batch.seq_lens_cpu),
                batch.batch_size,
                self.num_kv_heads,
                self._sm_count(device),
            )
            batch.attn_metadata = alloc_decode_buffers(
                batch.batch_size, self.num_heads, self.head_dim, splits, device
            )
            return
        ext = batch.extend_lens_cpu
        starts = [0] * len(ext)
        for i in range(1, len(ext)):
            starts[i] = starts[i - 1] + ext[i - 1]
        lens = torch.tensor([batch.prefix_lens_cpu, ext, starts], dtype=torch.int64)
        lens = lens.to(device, non_blocking=True)
        batch.attn_metadata = ExtendMetadata(lens[0], lens[1], lens[2], max(ext))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer_id: int,
        kv_pool: TokenToKVPool,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        kv_pool.set_kv(layer_id, batch.out_cache_loc, k, v)
        k_buf, v_buf = kv_pool.get_kv(layer_id)
        n, hq, d = q.shape
        out = q.new_empty(n, hq, d)
        q = q.to(k_buf.dtype).contiguous()
        meta = batch.attn_metadata
        if isinstance(meta, DecodeBuffers):
            decode_attention(
                q,
                k_buf,
                v_buf,
                out,
                batch.req_to_token,
                batch.req_pool_indices,
                batch.seq_lens,
                meta,
                scale,
            )
        else:
            assert isinstance(meta, ExtendMetadata)
            extend_attention(
                q,
                k_buf,
                v_buf,
                out,
                batch.req_to_token,
                batch.req_pool_indices,
                meta.prefix_lens,
                meta.extend_lens,
                meta.extend_starts,
                meta.max_extend_len,
                scale,
            )
        return out.view(n, hq * d)
