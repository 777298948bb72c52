"""The ``-DPLAIT_CLAIM_TRACE`` build (bench/bench_claim_trace.py): each claimed phase outside a
step is counted in its own slot, its parts add up to no more than its whole, and the products
give the default build's bits."""

from __future__ import annotations

import ctypes

import pytest
import torch

from plait.kernels import cpu_decode

pytestmark = pytest.mark.skipif(cpu_decode.library() is None, reason="no C step on this machine")

SLOTS, FIELDS = 11, 7  # PH_COUNT + TRACE_FIRST + TRACE_OTHER; phases .. joined
TRACE_OTHER = 10


def test_claim_trace_counts_each_phase_outside_a_step():
    lib = cpu_decode.variant(["PLAIT_CLAIM_TRACE"])
    lib.plait_claim_trace.restype = None
    lib.plait_claim_trace.argtypes = [ctypes.c_void_p]
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(1024, 576, generator=gen), torch.randn(1, 576, generator=gen)
    expected = torch.empty(1, 1024)
    assert cpu_decode.gemv(cpu_decode.library(), cpu_decode.DT_F32, w, x, expected) == 0
    sums = (ctypes.c_double * (SLOTS * FIELDS))()
    lib.plait_claim_trace(sums)  # cleared
    for _ in range(12):
        y = torch.empty(1, 1024)
        assert cpu_decode.gemv(lib, cpu_decode.DT_F32, w, x, y, threads=2) == 0
        assert torch.equal(y, expected)
    lib.plait_claim_trace(sums)
    slots = [list(sums[s * FIELDS : (s + 1) * FIELDS]) for s in range(SLOTS)]
    phases, total, own, wait, start, busy, joined = slots[TRACE_OTHER]
    assert phases == 12
    assert all(v == 0 for s in range(SLOTS) if s != TRACE_OTHER for v in slots[s])
    assert 0 < own <= total and 0 <= wait <= total and own + wait <= total * (1 + 1e-9)
    assert 0 <= joined <= phases and start >= 0 and busy >= 0
    if joined == 0:
        assert start == busy == 0
    lib.plait_claim_trace(sums)  # read clears
    assert all(v == 0 for v in sums)
