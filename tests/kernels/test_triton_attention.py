"""The Triton attention kernels and backend against a dense reference and the torch backend.

Without CUDA the kernels run under Triton's interpreter, so shapes stay small; with CUDA larger
shapes are added.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from plait.kernels.torch_backend import TorchAttentionBackend  # noqa: E402
from plait.kernels.triton_backend import TritonAttentionBackend  # noqa: E402
from plait.kernels.triton_decode import alloc_decode_buffers, decode_attention  # noqa: E402
from plait.kernels.triton_extend import extend_attention  # noqa: E402
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool  # noqa: E402
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
GQA = [(2, 2), (3, 1), (4, 1), (8, 1)]  # (Hq, Hkv): group sizes 1, 3, 4, 8
LARGE_GQA = [(32, 32), (24, 8), (32, 8), (64, 8)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# tf32 is never used (the kernels ask for IEEE dots), but a GPU's exp2 is approximate
GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@dataclass(slots=True)
class PagedBatch:
    batch: ForwardBatch
    pool: TokenToKVPool
    q: torch.Tensor  # [N, Hq, D]
    k: torch.Tensor  # [N, Hkv, D]
    v: torch.Tensor


def _reference(q, keys, values, q_pos, scale):
    """Dense causal attention for one request. q: [e, Hq, D]; keys/values: [S, Hkv, D]."""
    g = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(g, dim=1).transpose(0, 1).double()  # [Hq, S, D]
    v = values.repeat_interleave(g, dim=1).transpose(0, 1).double()
    s = torch.matmul(q.transpose(0, 1).double(), k.transpose(1, 2)) * scale  # [Hq, e, S]
    allowed = torch.arange(keys.shape[0])[None, :] <= torch.tensor(q_pos)[:, None]
    s = s.masked_fill(~allowed.to(s.device), float("-inf"))
    return torch.matmul(torch.softmax(s, -1), v).transpose(0, 1)  # [e, Hq, D]


def _make_batch(mode, prefix_lens, extend_lens, hq, hkv, d, dtype, seed) -> PagedBatch:
    """A paged batch whose requests' slots are scattered over the pool; prefixes are filled."""
    gen = torch.Generator().manual_seed(seed)
    b = len(prefix_lens)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = TokenToKVPool(sum(seq) + 8, 1, hkv, d, dtype, DEVICE)
    pool.free_slots = pool.free_slots[torch.randperm(len(pool.free_slots), generator=gen)]
    rows = ReqToTokenPool(b + 2, max(seq) + 3, DEVICE)
    pool_rows = [rows.alloc() for _ in range(b)]
    k_buf, v_buf = pool.get_kv(0)
    k_buf.copy_(torch.randn(k_buf.shape, generator=gen).to(dtype))
    v_buf.copy_(torch.randn(v_buf.shape, generator=gen).to(dtype))
    for r, p in zip(pool_rows, prefix_lens):
        rows.req_to_token[r, :p] = pool.alloc(p)
    new_slots = pool.alloc(sum(extend_lens))
    off = 0
    for r, p, s in zip(pool_rows, prefix_lens, seq):
        rows.req_to_token[r, p:s] = new_slots[off : off + s - p]
        off += s - p
    n = sum(extend_lens)
    q, k, v = (torch.randn(n, h, d, generator=gen).to(dtype).to(DEVICE) for h in (hq, hkv, hkv))
    batch = ForwardBatch(
        mode=mode,
        input_ids=torch.zeros(n, dtype=torch.int64, device=DEVICE),
        positions=torch.cat([torch.arange(p, s) for p, s in zip(prefix_lens, seq)]).to(DEVICE),
        out_cache_loc=new_slots,
        req_pool_indices=torch.tensor(pool_rows, device=DEVICE),
        seq_lens=torch.tensor(seq, device=DEVICE),
        prefix_lens_cpu=list(prefix_lens),
        extend_lens_cpu=list(extend_lens),
        seq_lens_cpu=seq,
        req_to_token=rows.req_to_token,
    )
    return PagedBatch(batch, pool, q, k, v)


def _check(pb: PagedBatch, out: torch.Tensor, scale: float, dtype: torch.dtype) -> None:
    """Every row written and each request within tolerance of the dense reference."""
    batch = pb.batch
    n, hq, d = pb.q.shape
    out = out.view(n, hq, d)
    assert out.dtype == pb.q.dtype
    assert not out.isnan().any(), "some output element was never written"
    k_buf, v_buf = pb.pool.get_kv(0)
    tol = (GPU_TOL if CUDA else TOL)[dtype]
    off = 0
    for i, (p, s) in enumerate(zip(batch.prefix_lens_cpu, batch.seq_lens_cpu)):
        slots = batch.req_to_token[batch.req_pool_indices[i], :s]
        ref = _reference(
            pb.q[off : off + s - p], k_buf[slots], v_buf[slots], list(range(p, s)), scale
        )
        got = out[off : off + s - p].double()
        err = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
        assert err < tol, f"request {i} (prefix {p}, seq {s}): relative error {err:.2e}"
        off += s - p


def _extend_lens(rng: random.Random, b: int, long: bool) -> tuple[list[int], list[int]]:
    """A prefix longer than its new part, no prefix with a multi-block new part, a one-token
    prefix with one new token, then random lengths."""
    top = 600 if long else 24
    first = rng.randint(2, top // 2) | 1
    prefix = [2 * first + rng.randint(1, top), 0, 1]
    extend = [first, rng.randint(top * 3 // 4, top) | 1, 1]
    for _ in range(b - 3):
        prefix.append(rng.choice([0, 1, rng.randint(2, top)]))
        extend.append(rng.choice([1, rng.randint(2, top)]))
    return prefix, extend


def _decode_prefixes(rng: random.Random, b: int, long: bool) -> list[int]:
    """No prefix (the only key is the new token), a short one, one longer than a split, random."""
    top = 4000 if long else 70
    prefix = [0, rng.randint(1, 15), rng.randint(top // 2, top)]
    return prefix + [rng.randint(0, top) for _ in range(b - 3)]


def _extend_cases() -> list:
    cases = [
        pytest.param(hq, hkv, d, dt, seed, False, id=f"{hq}x{hkv}-d{d}-{str(dt)[6:]}-s{seed}")
        for seed, (hq, hkv) in enumerate(GQA)
        for d in (64, 128)
        for dt in (torch.float32, torch.bfloat16)
    ]
    if CUDA:
        cases += [
            pytest.param(hq, hkv, d, dt, seed, True, id=f"large-{hq}x{hkv}-d{d}-{str(dt)[6:]}")
            for seed, (hq, hkv) in enumerate(LARGE_GQA)
            for d in (64, 128)
            for dt in (torch.float32, torch.bfloat16)
        ]
    return cases


def _decode_cases() -> list:
    cases = [
        pytest.param(
            hq, hkv, d, dt, seed, grouped, False, id=f"{hq}x{hkv}-d{d}-{str(dt)[6:]}-g{grouped:d}"
        )
        for seed, (hq, hkv) in enumerate(GQA)
        for d in (64, 128)
        for dt in (torch.float32, torch.bfloat16)
        for grouped in (False, True)
    ]
    if CUDA:
        cases += [
            pytest.param(
                hq, hkv, d, dt, seed, True, True, id=f"large-{hq}x{hkv}-d{d}-{str(dt)[6:]}"
            )
            for seed, (hq, hkv) in enumerate(LARGE_GQA)
            for d in (64, 128)
            for dt in (torch.float32, torch.bfloat16)
        ]
    return cases


@pytest.mark.parametrize("hq,hkv,d,dtype,seed,long", _extend_cases())
def test_extend_kernel_matches_dense_reference(hq, hkv, d, dtype, seed, long):
    rng = random.Random(seed)
    b = rng.randint(8, 16) if long else 3
    prefix, extend = _extend_lens(rng, b, long)
    pb = _make_batch(ForwardMode.EXTEND, prefix, extend, hq, hkv, d, dtype, seed)
    batch = pb.batch
    pb.pool.set_kv(0, batch.out_cache_loc, pb.k, pb.v)
    k_buf, v_buf = pb.pool.get_kv(0)
    starts = [sum(extend[:i]) for i in range(b)]
    out = torch.full_like(pb.q, float("nan"))
    scale = 1 / math.sqrt(d)
    extend_attention(
        pb.q,
        k_buf,
        v_buf,
        out,
        batch.req_to_token,
        batch.req_pool_indices,
        torch.tensor(prefix, device=DEVICE),
        torch.tensor(extend, device=DEVICE),
        torch.tensor(starts, device=DEVICE),
        max(extend),
        scale,
    )
    _check(pb, out, scale, dtype)


@pytest.mark.parametrize("hq,hkv,d,dtype,seed,grouped,long", _decode_cases())
def test_decode_kernel_matches_dense_reference(hq, hkv, d, dtype, seed, grouped, long):
    rng = random.Random(100 + seed)
    b = rng.randint(16, 64) if long else 3
    prefix = _decode_prefixes(rng, b, long)
    pb = _make_batch(ForwardMode.DECODE, prefix, [1] * b, hq, hkv, d, dtype, seed)
    batch = pb.batch
    pb.pool.set_kv(0, batch.out_cache_loc, pb.k, pb.v)
    k_buf, v_buf = pb.pool.get_kv(0)
    splits = 8 if long else 3  # more splits than keys for the short requests
    buffers = alloc_decode_buffers(b, hq, d, splits, DEVICE)
    out = torch.full_like(pb.q, float("nan"))
    scale = 1 / math.sqrt(d)
    decode_attention(
        pb.q,
        k_buf,
        v_buf,
        out,
        batch.req_to_token,
        batch.req_pool_indices,
        batch.seq_lens,
        buffers,
        scale,
        grouped=grouped,
    )
    _check(pb, out, scale, dtype)


@pytest.mark.parametrize("mode", [ForwardMode.EXTEND, ForwardMode.DECODE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_backend_matches_torch_backend(mode, dtype, hq, hkv):
    rng = random.Random(7)
    d = 64
    b = 3
    if mode == ForwardMode.EXTEND:
        prefix, extend = _extend_lens(rng, b, long=False)
    else:
        prefix, extend = _decode_prefixes(rng, b, long=False), [1] * b
    scale = 1 / math.sqrt(d)
    outs = []
    for backend in (TorchAttentionBackend(hq, hkv, d), TritonAttentionBackend(hq, hkv, d)):
        pb = _make_batch(mode, prefix, extend, hq, hkv, d, dtype, seed=7)
        backend.init_forward_metadata(pb.batch)
        out = backend.forward(pb.q, pb.k, pb.v, 0, pb.pool, pb.batch, scale)
        assert out.shape == (sum(extend), hq * d)
        _check(pb, out, scale, dtype)
        outs.append(out.double())
    err = float(torch.linalg.norm(outs[1] - outs[0]) / torch.linalg.norm(outs[0]))
    assert err < (GPU_TOL if CUDA else TOL)[dtype]
