"""Attention over the paged KV pool on the CPU: torch's SDPA (also the reference for kernels),
and a prefill's attention by the C library where it is built (``extend_attention.c``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plait.kernels import cpu_decode
from plait.kernels.attention_backend import AttentionBackend
from plait.kernels.shared_prefix import SharedPrefixDecode, plan_shared_prefix, shared_prefix_decode
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode

# Pad the batch into one attention call unless padding would more than double the work.
_MAX_PAD_WASTE = 2.0


@dataclass(slots=True)
class _Group:
    """Requests attended in one padded SDPA call."""

    kv_index: torch.Tensor  # [b, max_seq] slots, padding -> slot 0
    mask: torch.Tensor | None  # [b, 1, G * max_ext, max_seq] bool, True = attend; None = all
    token_index: torch.Tensor  # [n] flat token -> row in the padded [b * max_ext] layout
    flat_index: torch.Tensor  # [n] which flat tokens of the batch this group holds
    b: int
    max_ext: int


@dataclass(slots=True)
class _Extend:
    """An extend forward's metadata: the per-request columns the C kernel reads (int64, CPU),
    and the padded SDPA groups, built only when a layer attends by SDPA (``groups``)."""

    prefix: torch.Tensor  # [b]
    ext: torch.Tensor  # [b]
    groups: list[_Group] | None = None


class TorchAttentionBackend(AttentionBackend):
    """Gathers each request's KV through ``req_to_token`` and runs SDPA.

    Grouped-query attention never materialises repeated KV: the G query heads of a KV head are
    folded into the query-length axis, so one matmul serves the whole group.

    An extend forward on the CPU whose queries and pool are both float32 or both bfloat16 is
    attended by the C library's ``plait_extend_attention`` where it is built (AVX-512, and
    AVX512_BF16 for bfloat16; head_dim 64 or 128) and ``c_extend`` is on: causal over the
    pool's slots in place, no gathered copy of K / V and no mask (2-4x torch's SDPA at 250-4,000
    tokens, bench/RESULTS.md). bfloat16 rounds the softmax weights for P V, as torch's CPU flash
    attention does; the results do not depend on the thread count or the batch.
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        shared_prefix: bool = True,
        c_extend: bool = True,
    ) -> None:
        assert num_heads % num_kv_heads == 0
        self.shared_prefix = shared_prefix
        self.c_extend = c_extend
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.group = num_heads // num_kv_heads
        self.head_dim = head_dim

    def init_forward_metadata(self, batch: ForwardBatch) -> None:
        seq = batch.seq_lens_cpu
        if batch.mode == ForwardMode.DECODE:
            # one gather of the table serves the shared-prefix plan or the padded group
            kv_index = batch.req_to_token[batch.req_pool_indices, : max(seq)]
            plan = plan_shared_prefix(kv_index, batch.seq_lens) if self.shared_prefix else None
            batch.attn_metadata = plan or [self._group(batch, list(range(len(seq))), kv_index)]
            return
        batch.attn_metadata = _Extend(
            torch.tensor(batch.prefix_lens_cpu, dtype=torch.int64),
            torch.tensor(batch.extend_lens_cpu, dtype=torch.int64),
        )

    def _groups(self, batch: ForwardBatch) -> list[_Group]:
        """An extend batch's SDPA groups: one padded group, or where padding would more than
        double the work, the decode rows together and each longer row alone."""
        ext, seq = batch.extend_lens_cpu, batch.seq_lens_cpu
        padded = len(seq) * max(ext) * max(seq)
        useful = sum(e * s for e, s in zip(ext, seq))
        all_rows = list(range(len(seq)))
        if padded <= _MAX_PAD_WASTE * useful:
            return [self._group(batch, all_rows)]
        # a mixed batch: the decode rows (one token each) pad well together
        decodes = [i for i in all_rows if ext[i] == 1]
        groups = [self._group(batch, decodes)] if len(decodes) > 1 else []
        singles = [i for i in all_rows if ext[i] > 1 or len(decodes) == 1]
        return groups + [self._group(batch, [i]) for i in singles]

    def _group(
        self, batch: ForwardBatch, rows: list[int], kv_index: torch.Tensor | None = None
    ) -> _Group:
        ext = [batch.extend_lens_cpu[i] for i in rows]
        pre = [batch.prefix_lens_cpu[i] for i in rows]
        seq = [batch.seq_lens_cpu[i] for i in rows]
        b, max_ext, max_seq = len(rows), max(ext), max(seq)
        device = batch.input_ids.device
        starts = [0]
        for e in batch.extend_lens_cpu:
            starts.append(starts[-1] + e)

        if kv_index is None:  # advanced indexing copies: padding can be overwritten below
            kv_index = batch.req_to_token[batch.req_pool_indices[rows], :max_seq]
        seq_t = torch.tensor(seq, device=device)
        pre_t = torch.tensor(pre, device=device)
        ext_t = torch.tensor(ext, device=device)
        key_pos = torch.arange(max_seq, device=device)
        kv_index.masked_fill_(key_pos[None, :] >= seq_t[:, None], 0)

        q_pos = pre_t[:, None] + torch.arange(max_ext, device=device)[None, :]  # [b, max_ext]
        mask = key_pos[None, None, :] <= q_pos[:, :, None]  # causal
        mask &= key_pos[None, None, :] < seq_t[:, None, None]
        # padded query rows attend to key 0 so that no row is fully masked (they are dropped)
        pad_q = torch.arange(max_ext, device=device)[None, :] >= ext_t[:, None]
        mask[..., 0] |= pad_q
        mask = mask[:, None].expand(b, self.group, max_ext, max_seq)
        mask = mask.reshape(b, 1, self.group * max_ext, max_seq)
        if b == 1 and max_ext == 1:
            mask = None  # one decode token sees its whole sequence: SDPA's unmasked path is faster

        flat_index = torch.cat(
            [torch.arange(starts[i], starts[i] + batch.extend_lens_cpu[i]) for i in rows]
        ).to(device)
        token_index = torch.cat(
            [torch.arange(j * max_ext, j * max_ext + e) for j, e in enumerate(ext)]
        ).to(device)
        return _Group(kv_index, mask, token_index, flat_index, b, max_ext)

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
        meta = batch.attn_metadata
        if isinstance(meta, SharedPrefixDecode):
            return shared_prefix_decode(q, k_buf, v_buf, meta, scale).view(n, hq * d)
        if isinstance(meta, _Extend):
            out = self._c_attend(q, k_buf, v_buf, batch, meta, scale)
            if out is not None:
                return out.view(n, hq * d)
            if meta.groups is None:
                meta.groups = self._groups(batch)
            groups = meta.groups
        else:
            groups = meta
        if len(groups) == 1:  # one group holds every token, in order
            return self._attend(q, k_buf, v_buf, groups[0], scale).reshape(n, hq * d)
        out = q.new_empty(n, hq * d)
        for grp in groups:
            out[grp.flat_index] = self._attend(q[grp.flat_index], k_buf, v_buf, grp, scale).reshape(
                -1, hq * d
            )
        return out

    def _c_attend(
        self,
        q: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        batch: ForwardBatch,
        meta: _Extend,
        scale: float,
    ) -> torch.Tensor | None:
        """The extend attention by the C library, or None where it does not apply here."""
        if not (
            self.c_extend
            and q.device.type == "cpu"
            and q.dtype == k_buf.dtype == v_buf.dtype
            and q.dtype in (torch.float32, torch.bfloat16)
        ):
            return None
        if not cpu_decode.extend_attention_built(q.dtype == torch.bfloat16):
            return None
        lib = cpu_decode.library()
        assert lib is not None  # (built)
        q = q.contiguous()
        out = torch.empty_like(q)
        rc = cpu_decode.extend_attention(
            lib, q, k_buf, v_buf, batch.req_to_token, batch.req_pool_indices,
            meta.prefix, meta.ext, scale, out, batch.cpu_threads or torch.get_num_threads(),
        )  # fmt: skip
        return out if rc == 0 else None

    def _attend(
        self,
        q: torch.Tensor,  # [n, Hq, D] tokens of this group, flat
        k_buf: torch.Tensor,  # [slots, Hkv, D]
        v_buf: torch.Tensor,
        grp: _Group,
        scale: float,
    ) -> torch.Tensor:
        b, e = grp.b, grp.max_ext
        hkv, g, d = self.num_kv_heads, self.group, self.head_dim
        if q.shape[0] == b * e:
            q_pad = q
        else:
            q_pad = q.new_zeros(b * e, self.num_heads, d)
            q_pad[grp.token_index] = q
        # [b*e, Hq, D] -> [b, Hkv, G*e, D]
        q_pad = q_pad.view(b, e, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * e, d)
        # index_select is several times faster than advanced indexing for row gathers on CPU
        flat = grp.kv_index.view(-1)
        keys = k_buf.index_select(0, flat).view(b, -1, hkv, d).transpose(1, 2)  # [b, Hkv, S, D]
        values = v_buf.index_select(0, flat).view(b, -1, hkv, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q_pad, keys, values, attn_mask=grp.mask, scale=scale)
        o = o.view(b, hkv, g, e, d).permute(0, 3, 1, 2, 4).reshape(b * e, hkv * g, d)
        if q.shape[0] == b * e:
            return o
        return o[grp.token_index]
