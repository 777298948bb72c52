"""Decode attention in Triton: one query per request, split along the sequence (flash-decoding).

Stage 1 gives each (request, head, split) program a contiguous run of the request's keys and
writes a normalised partial output and its log-sum-exp (base 2); stage 2 merges the splits of a
(request, head) by their log-sum-exp. The grouped stage 1 handles all G query heads of a KV head
in one program, so the KV tile is read once and scored with ``tl.dot`` on a [G_pad, D] tile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from plait.kernels.triton_extend import tile_dot

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
MAX_KV_SPLITS = 16


@dataclass(slots=True)
class DecodeBuffers:
    """Per-forward scratch shared by every layer."""

    mid_out: torch.Tensor  # [B, Hq, splits, D] float32, normalised partial outputs
    mid_lse: torch.Tensor  # [B, Hq, splits] float32, base-2 log-sum-exp of each split

    @property
    def num_splits(self) -> int:
        return self.mid_lse.shape[2]


def alloc_decode_buffers(
    batch_size: int, num_heads: int, head_dim: int, num_splits: int, device: torch.device
) -> DecodeBuffers:
    return DecodeBuffers(
        torch.empty(
            batch_size, num_heads, num_splits, head_dim, dtype=torch.float32, device=device
        ),
        torch.empty(batch_size, num_heads, num_splits, dtype=torch.float32, device=device),
    )


def choose_num_splits(max_seq_len: int, batch_size: int, num_kv_heads: int, num_sms: int) -> int:
    """Enough splits to give every SM a few programs, none shorter than one 256-key chunk."""
    if _INTERPRET:
        return max(1, min(4, triton.cdiv(max_seq_len, 32)))
    want = triton.cdiv(2 * num_sms, batch_size * num_kv_heads)
    return max(1, min(MAX_KV_SPLITS, want, triton.cdiv(max_seq_len, 256)))


@triton.jit
def _split_range(seq_len, split, NUM_SPLITS: tl.constexpr):
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    start = split * split_len
    return start, tl.minimum(start + split_len, seq_len)


@triton.jit
def _decode_stage1(
    q,  # [B, Hq, D]
    k_buf,  # [slots, Hkv, D]
    v_buf,
    mid_out,  # [B, Hq, S, D]
    mid_lse,  # [B, Hq, S]
    req_to_token,
    req_pool_indices,
    seq_lens,
    sm_scale_log2,
    stride_qb,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    stride_req,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + req)
    start, end = _split_range(seq_len, split, NUM_SPLITS)
    if start >= end:
        return
    row = tl.load(req_pool_indices + req)
    kv_head = head // GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < HEAD_DIM
    q_vec = tl.load(q + req * stride_qb + head * stride_qh + offs_d, mask=mask_d, other=0.0)
    q_vec = q_vec.to(tl.float32)

    m_i = -1e30
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        key_pos = n0 + offs_n
        mask_n = key_pos < end
        slot = tl.load(req_to_token + row * stride_req + key_pos, mask=mask_n, other=0)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k_ptrs = k_buf + slot[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :]
        k_tile = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(tl.float32)  # [N, D]
        s = tl.sum(q_vec[None, :] * k_tile, 1) * sm_scale_log2
        s = tl.where(mask_n, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        v_ptrs = v_buf + slot[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :]
        v_tile = tl.load(v_ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v_tile, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new

    mid = mid_out + req * stride_mb + head * stride_mh + split * stride_ms
    tl.store(mid + offs_d, acc / l_i, mask=mask_d)
    tl.store(mid_lse + req * stride_lb + head * stride_lh + split, m_i + tl.log2(l_i))


@triton.jit
def _decode_grouped_stage1(
    q,  # [B, Hq, D]
    k_buf,  # [slots, Hkv, D]
    v_buf,
    mid_out,  # [B, Hq, S, D]
    mid_lse,  # [B, Hq, S]
    req_to_token,
    req_pool_indices,
    seq_lens,
    sm_scale_log2,
    stride_qb,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    stride_req,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + req)
    start, end = _split_range(seq_len, split, NUM_SPLITS)
    if start >= end:
        return
    row = tl.load(req_pool_indices + req)
    heads = kv_head * GROUP + tl.arange(0, BLOCK_H)
    mask_h = tl.arange(0, BLOCK_H) < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < HEAD_DIM
    q_ptrs = q + req * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    q_tile = tl.load(q_ptrs, mask=mask_h[:, None] & mask_d[None, :], other=0.0)  # [H, D]

    m_i = tl.full([BLOCK_H], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        key_pos = n0 + offs_n
        mask_n = key_pos < end
        slot = tl.load(req_to_token + row * stride_req + key_pos, mask=mask_n, other=0)
        k_ptrs = k_buf + slot[None, :] * stride_kn + kv_head * stride_kh + offs_d[:, None]
        k_tile = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # [D, N]
        s = tile_dot(q_tile, k_tile) * sm_scale_log2  # [H, N]
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        v_ptrs = v_buf + slot[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :]
        v_tile = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [N, D]
        acc = acc * alpha[:, None] + tile_dot(p.to(v_tile.dtype), v_tile)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    mid = mid_out + req * stride_mb + heads[:, None] * stride_mh + split * stride_ms
    tl.store(mid + offs_d[None, :], acc / l_i[:, None], mask=mask_h[:, None] & mask_d[None, :])
    lse_ptrs = mid_lse + req * stride_lb + heads * stride_lh + split
    tl.store(lse_ptrs, m_i + tl.log2(l_i), mask=mask_h)


@triton.jit
def _decode_stage2(
    mid_out,  # [B, Hq, S, D]
    mid_lse,  # [B, Hq, S]
    out,  # [B, Hq, D]
    seq_lens,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens + req)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    m_i = -1e30
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for split in range(NUM_SPLITS):
        start, end = _split_range(seq_len, split, NUM_SPLITS)
        if end > start:
            lse = tl.load(mid_lse + req * stride_lb + head * stride_lh + split)
            part_ptrs = mid_out + req * stride_mb + head * stride_mh + split * stride_ms
            part = tl.load(part_ptrs + offs_d, mask=mask_d, other=0.0)
            m_new = tl.maximum(m_i, lse)
            alpha = tl.exp2(m_i - m_new)
            w = tl.exp2(lse - m_new)
            acc = acc * alpha + w * part
            l_i = l_i * alpha + w
            m_i = m_new
    o_ptrs = out + req * stride_ob + head * stride_oh + offs_d
    tl.store(o_ptrs, (acc / l_i).to(out.dtype.element_ty), mask=mask_d)


def decode_attention(
    q: torch.Tensor,  # [B, Hq, D], one query per request
    k_buf: torch.Tensor,  # [slots, Hkv, D]
    v_buf: torch.Tensor,
    out: torch.Tensor,  # [B, Hq, D], written in full
    req_to_token: torch.Tensor,  # [max_reqs, max_context_len]
    req_pool_indices: torch.Tensor,  # [B]
    seq_lens: torch.Tensor,  # [B], every entry >= 1
    buffers: DecodeBuffers,
    scale: float,
    grouped: bool | None = None,
) -> None:
    """Attention of each request's one query over its whole KV; ``grouped`` defaults to G > 1."""
    b, hq, d = q.shape
    hkv = k_buf.shape[1]
    group = hq // hkv
    assert hq % hkv == 0 and q.stride(2) == 1 and k_buf.stride(2) == 1 and out.stride(2) == 1
    assert req_to_token.stride(1) == 1
    if grouped is None:
        grouped = group > 1
    mid_out, mid_lse = buffers.mid_out, buffers.mid_lse
    splits = buffers.num_splits
    block_d = max(16, triton.next_power_of_2(d))
    block_n = 16 if _INTERPRET else 64
    common = (
        mid_out,
        mid_lse,
        req_to_token,
        req_pool_indices,
        seq_lens,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        v_buf.stride(0),
        v_buf.stride(1),
        mid_out.stride(0),
        mid_out.stride(1),
        mid_out.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        req_to_token.stride(0),
    )
    if grouped:
        _decode_grouped_stage1[(b, hkv, splits)](
            q,
            k_buf,
            v_buf,
            *common,
            GROUP=group,
            HEAD_DIM=d,
            BLOCK_H=max(16, triton.next_power_of_2(group)),
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            NUM_SPLITS=splits,
            num_warps=4,
            num_stages=2,
        )
    else:
        _decode_stage1[(b, hq, splits)](
            q,
            k_buf,
            v_buf,
            *common,
            GROUP=group,
            HEAD_DIM=d,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            NUM_SPLITS=splits,
            num_warps=4 if d <= 64 else 8,
            num_stages=2,
        )
    _decode_stage2[(b, hq)](
        mid_out,
        mid_lse,
        out,
        seq_lens,
        mid_out.stride(0),
        mid_out.stride(1),
        mid_out.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=d,
        BLOCK_D=block_d,
        NUM_SPLITS=splits,
        num_warps=4,
    )
