"""The torch attention backend against a dense reference, including the shared-prefix path."""

from __future__ import annotations

import math
import random

import pytest
import torch

from plait.kernels import cpu_decode
from plait.kernels.shared_prefix import plan_shared_prefix
from plait.kernels.torch_backend import TorchAttentionBackend
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode


def _reference(q, keys, values, q_pos, scale):
    """Dense causal attention for one request. q: [e, Hq, D]; keys/values: [S, Hkv, D]."""
    g = q.shape[1] // keys.shape[1]
    k = keys.repeat_interleave(g, dim=1).transpose(0, 1).double()  # [Hq, S, D]
    v = values.repeat_interleave(g, dim=1).transpose(0, 1).double()
    s = torch.matmul(q.transpose(0, 1).double(), k.transpose(1, 2)) * scale  # [Hq, e, S]
    allowed = torch.arange(keys.shape[0])[None, :] <= torch.tensor(q_pos)[:, None]
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(s, -1), v).transpose(0, 1)  # [e, Hq, D]


def _run(
    mode,
    prefix_lens,
    extend_lens,
    hq,
    hkv,
    d,
    shared,
    seed,
    dtype=torch.float32,
    cpu_threads=0,
    **backend_kw,
):
    """Attends a random batch through ``TorchAttentionBackend(..., **backend_kw)``, checks each
    request against ``_reference`` (float64) and returns the batch, the output and the largest
    relative error of a request."""
    gen = torch.Generator().manual_seed(seed)
    b = len(prefix_lens)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = TokenToKVPool(sum(seq) + shared + 8, 1, hkv, d, dtype)
    rows = ReqToTokenPool(b + 1, max(seq) + 1)
    common = pool.alloc(shared)
    for i in range(b):
        rows.alloc()
        own = pool.alloc(prefix_lens[i] - shared)
        slots = torch.cat([common, own])
        rows.req_to_token[i, : prefix_lens[i]] = slots
    k_buf, v_buf = pool.get_kv(0)
    k_buf.copy_(torch.randn(k_buf.shape, generator=gen).to(dtype))
    v_buf.copy_(torch.randn(v_buf.shape, generator=gen).to(dtype))
    new_slots = pool.alloc(sum(extend_lens))
    off = 0
    for i in range(b):
        rows.req_to_token[i, prefix_lens[i] : seq[i]] = new_slots[off : off + extend_lens[i]]
        off += extend_lens[i]
    n = sum(extend_lens)
    q = torch.randn(n, hq, d, generator=gen).to(dtype)
    k = torch.randn(n, hkv, d, generator=gen).to(dtype)
    v = torch.randn(n, hkv, d, generator=gen).to(dtype)
    batch = ForwardBatch(
        mode=mode,
        input_ids=torch.zeros(n, dtype=torch.int64),
        positions=torch.cat([torch.arange(p, s) for p, s in zip(prefix_lens, seq)]),
        out_cache_loc=new_slots,
        req_pool_indices=torch.arange(b),
        seq_lens=torch.tensor(seq),
        prefix_lens_cpu=list(prefix_lens),
        extend_lens_cpu=list(extend_lens),
        seq_lens_cpu=seq,
        req_to_token=rows.req_to_token,
        cpu_threads=cpu_threads,
    )
    backend = TorchAttentionBackend(hq, hkv, d, **backend_kw)
    backend.init_forward_metadata(batch)
    scale = 1 / math.sqrt(d)
    out = backend.forward(q, k, v, 0, pool, batch, scale).view(n, hq, d)
    off, worst = 0, 0.0
    for i in range(b):
        slots = rows.req_to_token[i, : seq[i]]
        ref = _reference(
            q[off : off + extend_lens[i]],
            k_buf[slots],
            v_buf[slots],
            list(range(prefix_lens[i], seq[i])),
            scale,
        )
        got = out[off : off + extend_lens[i]].double()
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        err = (torch.linalg.norm(got - ref) / torch.linalg.norm(ref)).item()
        assert err < tol
        worst = max(worst, err)
        off += extend_lens[i]
    return batch, out, worst


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (8, 2), (8, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_extend_matches_dense_reference(hq, hkv, seed):
    rng = random.Random(seed)
    b = rng.randint(1, 5)
    prefix = [rng.choice([0, 1, rng.randint(2, 40)]) for _ in range(b)]
    extend = [rng.choice([1, rng.randint(2, 30)]) for _ in range(b)]
    _run(ForwardMode.EXTEND, prefix, extend, hq, hkv, 16, 0, seed)


@pytest.mark.parametrize("shared", [0, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_decode_matches_dense_reference(shared, dtype, seed):
    rng = random.Random(seed)
    b = rng.randint(2, 8)
    prefix = [shared + rng.randint(0, 30) for _ in range(b)]
    batch, _, _ = _run(ForwardMode.DECODE, prefix, [1] * b, 9, 3, 64, shared, seed, dtype)
    used_shared = plan_shared_prefix(
        batch.req_to_token[: len(prefix), : max(batch.seq_lens_cpu)], batch.seq_lens
    )
    assert (used_shared is not None) == (shared > 0)


_LIB = cpu_decode.library()


def _c_built(dtype: torch.dtype) -> bool:
    return cpu_decode.extend_attention_built(dtype == torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (4, 4, 64), (8, 2, 128), (12, 1, 64)])
@pytest.mark.parametrize("seed", range(3))
def test_extend_by_c_is_as_close_to_the_reference_as_sdpa(dtype, hq, hkv, d, seed):
    """An extend batch (blocks of 64 keys and of a unit's positions cut anywhere, decode rows
    among prefills) attended by the C kernel where it is built, held to SDPA's own error against
    float64 (and ``_run``'s bound for the dtype)."""
    rng = random.Random(seed)
    b = rng.randint(1, 4)
    prefix = [rng.choice([0, rng.randint(1, 70)]) for _ in range(b)]
    extend = [rng.choice([1, 31, 32, 33, 64, 65, 96, rng.randint(2, 130)]) for _ in range(b)]
    args = (ForwardMode.EXTEND, prefix, extend, hq, hkv, d, 0, seed, dtype)
    batch, _, c_err = _run(*args)
    _, _, sdpa_err = _run(*args, c_extend=False)
    assert c_err <= 1.5 * sdpa_err + (1e-3 if dtype == torch.bfloat16 else 1e-7)
    # the C kernel attended every layer where it is built: no SDPA group was made
    assert (batch.attn_metadata.groups is None) == _c_built(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "prefix,extend",
    [
        ([300, 900, 5], [1, 1, 1]),  # decode rows alone: several of the decode kernel's chunks
        ([499, 0, 2100, 64], [1, 200, 1, 1]),  # decode rows riding in a prefill's forward
        ([0], [1]),  # a one-token prompt
    ],
)
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 2, 128), (12, 1, 64), (4, 4, 64)])
def test_decode_rows_in_an_extend_batch_are_as_close_as_sdpa(dtype, prefix, extend, hq, hkv, d):
    """A request of one new token in an extend forward (a decode row mixed into a prefill's
    chunk) is attended by the decode step's kernel inside the C extend attention: held to
    SDPA's error against float64, across chunk merges (odd key counts among them: p . v takes
    keys by pairs in bfloat16) and with or without prefills beside it, for groups of 1 to 12
    query heads (p . v takes them four at a time) and head dims of 64 and 128."""
    args = (ForwardMode.EXTEND, prefix, extend, hq, hkv, d, 0, 7, dtype)
    batch, _, c_err = _run(*args)
    _, _, sdpa_err = _run(*args, c_extend=False)
    assert c_err <= 1.5 * sdpa_err + (1e-3 if dtype == torch.bfloat16 else 1e-7)
    assert (batch.attn_metadata.groups is None) == _c_built(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extend_of_a_head_dim_the_kernel_lacks_is_attended_by_sdpa(dtype):
    batch, _, _ = _run(ForwardMode.EXTEND, [5, 0], [40, 3], 4, 2, 80, 0, 0, dtype)
    assert batch.attn_metadata.groups is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_extend_bits_do_not_depend_on_threads_or_the_batch(dtype):
    if not _c_built(dtype):
        pytest.skip(f"the C extend attention is not built for {dtype} here")
    gen = torch.Generator().manual_seed(0)
    hq, hkv, d = 9, 3, 64
    prefix, ext = [17, 0, 40, 300], [75, 1, 130, 1]
    seq = [p + e for p, e in zip(prefix, ext)]
    k_buf = torch.randn(sum(seq) + 1, hkv, d, generator=gen).to(dtype)
    v_buf = torch.randn(sum(seq) + 1, hkv, d, generator=gen).to(dtype)
    table = torch.zeros(len(seq), max(seq), dtype=torch.int64)
    order = torch.randperm(sum(seq), generator=gen) + 1
    for i, (start, n) in enumerate(zip([0, *torch.tensor(seq).cumsum(0).tolist()], seq)):
        table[i, :n] = order[start : start + n]
    q = torch.randn(sum(ext), hq, d, generator=gen).to(dtype)

    def attend(rows: list[int], threads: int) -> torch.Tensor:
        starts = [0, *torch.tensor(ext).cumsum(0).tolist()]
        qs = torch.cat([q[starts[r] : starts[r + 1]] for r in rows])
        out = torch.empty_like(qs)
        rc = cpu_decode.extend_attention(
            _LIB, qs, k_buf, v_buf, table, torch.tensor(rows),
            torch.tensor([prefix[r] for r in rows]), torch.tensor([ext[r] for r in rows]),
            d**-0.5, out, threads,
        )  # fmt: skip
        assert rc == 0
        return out

    batch = attend([0, 1, 2, 3], 2)
    assert torch.equal(batch, attend([0, 1, 2, 3], 1))
    assert torch.equal(batch[: ext[0]], attend([0], 2))
    assert torch.equal(batch[ext[0] + ext[1] : -1], attend([2], 1))
    assert torch.equal(batch[ext[0] : ext[0] + ext[1]], attend([1], 1))  # the decode rows
    assert torch.equal(batch[-1:], attend([3], 1))  # (three chunks merged)


def test_c_extend_runs_on_the_forwards_threads_not_torchs(monkeypatch):
    """A forward whose products are OpenBLAS's runs torch's ops on one thread; the runner's
    count for the forward (``cpu_threads``) is the kernel's."""
    if not _c_built(torch.float32):
        pytest.skip("the C extend attention is not built here")
    seen = []
    real = cpu_decode.extend_attention

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(cpu_decode, "extend_attention", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(ForwardMode.EXTEND, [3], [40], 9, 3, 64, 0, 0, cpu_threads=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [2]
