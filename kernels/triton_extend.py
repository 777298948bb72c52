"""Extend (prefill on top of a cached prefix) attention in Triton.

One program owns ``BLOCK_M`` new tokens of one request and one query head; it walks that
request's keys through ``req_to_token`` (prefix and new tokens alike: the new K/V are already in
the pool) with one online softmax, stopping at the last key its last query may see.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
# The interpreter computes bfloat16 dots wrong (triton 3.9): there the operands go up to float32.
_UPCAST_DOT = tl.constexpr(_INTERPRET)


@triton.jit
def tile_dot(a, b):
    """``a @ b`` accumulated in float32; IEEE float32 products, never tf32."""
    if _UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _extend_kernel(
    q,  # [N, Hq, D]
    k_buf,  # [slots, Hkv, D]
    v_buf,
    out,  # [N, Hq, D]
    req_to_token,  # [max_reqs, max_context_len]
    req_pool_indices,  # [B]
    prefix_lens,  # [B]
    extend_lens,  # [B]
    extend_starts,  # [B] first flat token of each request
    sm_scale_log2,
    stride_qn,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_on,
    stride_oh,
    stride_req,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    extend_len = tl.load(extend_lens + req)
    if m_block * BLOCK_M >= extend_len:
        return
    prefix_len = tl.load(prefix_lens + req)
    token_start = tl.load(extend_starts + req)
    row = tl.load(req_pool_indices + req)
    kv_head = head // GROUP

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < extend_len
    mask_d = offs_d < HEAD_DIM
    q_pos = prefix_len + offs_m  # [BLOCK_M] position of each query in its sequence

    q_ptrs = q + (token_start + offs_m)[:, None] * stride_qn + head * stride_qh + offs_d[None, :]
    q_tile = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # keys past the block's last query are causally masked for every row: stop there
    kv_end = tl.minimum(prefix_len + extend_len, prefix_len + (m_block + 1) * BLOCK_M)
    for start in range(0, kv_end, BLOCK_N):
        key_pos = start + offs_n
        mask_n = key_pos < kv_end
        slot = tl.load(req_to_token + row * stride_req + key_pos, mask=mask_n, other=0)
        k_ptrs = k_buf + slot[None, :] * stride_kn + kv_head * stride_kh + offs_d[:, None]
        k_tile = tl.load(k_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)  # [D, N]
        s = tile_dot(q_tile, k_tile) * sm_scale_log2
        allowed = (key_pos[None, :] <= q_pos[:, None]) & mask_n[None, :]
        s = tl.where(allowed, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = v_buf + slot[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :]
        v_tile = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [N, D]
        acc = acc * alpha[:, None] + tile_dot(p.to(v_tile.dtype), v_tile)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = out + (token_start + offs_m)[:, None] * stride_on + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, acc.to(out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _extend_blocks(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): small tiles for the interpreter, tensor-core tiles on GPU."""
    if _INTERPRET:
        return 16, 16, 4
    if head_dim <= 64:
        return 128, 64, 4
    if head_dim <= 128:
        return 128, 64, 8
    return 64, 32, 8


def extend_attention(
    q: torch.Tensor,  # [N, Hq, D]
    k_buf: torch.Tensor,  # [slots, Hkv, D]
    v_buf: torch.Tensor,
    out: torch.Tensor,  # [N, Hq, D], written in full
    req_to_token: torch.Tensor,  # [max_reqs, max_context_len]
    req_pool_indices: torch.Tensor,  # [B]
    prefix_lens: torch.Tensor,  # [B]
    extend_lens: torch.Tensor,  # [B]
    extend_starts: torch.Tensor,  # [B]
    max_extend_len: int,
    scale: float,
) -> None:
    """Causal attention of each request's new tokens over its prefix and themselves."""
    n, hq, d = q.shape
    hkv = k_buf.shape[1]
    assert hq % hkv == 0 and q.stride(2) == 1 and k_buf.stride(2) == 1 and out.stride(2) == 1
    assert req_to_token.stride(1) == 1
    block_m, block_n, num_warps = _extend_blocks(d)
    grid = (len(extend_lens), hq, triton.cdiv(max_extend_len, block_m))
    _extend_kernel[grid](
        q,
        k_buf,
        v_buf,
        out,
        req_to_token,
        req_pool_indices,
        prefix_lens,
        extend_lens,
        extend_starts,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        k_buf.stride(0),
        k_buf.stride(1),
        v_buf.stride(0),
        v_buf.stride(1),
        out.stride(0),
        out.stride(1),
        req_to_token.stride(0),
        GROUP=hq // hkv,
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
        num_stages=1,
    )
