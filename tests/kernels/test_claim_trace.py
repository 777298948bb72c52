"""The ``-DPLAIT_CLAIM_TRACE`` build (bench/bench_claim_trace.py): a decode step computes what
the default build computes and counts each claimed phase under its part (the step's first one
apart), products outside a step under their own slot, each phase's parts no more than its whole,
and a read clears the sums. The default build has none of it."""

from __future__ import annotations

import pytest
import torch

from plait.kernels import cpu_decode
from tests.runtime.model.test_fused_decode import _State

pytestmark = pytest.mark.skipif(cpu_decode.library() is None, reason="no C step on this machine")


def _consistent(s: dict[str, float]) -> None:
    assert 0 < s["own"] <= s["total"] and 0 <= s["wait"] <= s["total"]
    assert s["own"] + s["wait"] <= s["total"] * (1 + 1e-9)
    assert 0 <= s["joined"] <= s["phases"] and s["start"] >= 0 and s["busy"] >= 0
    if s["joined"] == 0:
        assert s["start"] == s["busy"] == 0


def test_a_traced_step_counts_each_part_and_computes_the_same_logits(tiny_model_dir):
    assert not hasattr(cpu_decode.library(), "plait_claim_trace")
    traced = cpu_decode.variant(["PLAIT_CLAIM_TRACE"])
    state = _State(tiny_model_dir("llama"), "float32", [5, 17, 3])
    batch = state.decode_batch([0, 1, 2], [7, 8, 9])
    expected = state.fused_step(batch)
    cpu_decode.claim_trace(traced)  # cleared
    assert torch.equal(state.fused_step_on(traced, batch), expected)
    sums = cpu_decode.claim_trace(traced)
    layers = state.cfg.num_layers
    phases = {slot: s["phases"] for slot, s in sums.items() if s["phases"]}
    assert phases == {  # the first layer's q/k/v product is the step's first claimed phase
        "first": 1, "qkv": layers - 1, "attention": layers, "o": layers, "gate_up": layers,
        "silu": layers, "down": layers, "head": 1,
    }  # fmt: skip
    for slot in phases:
        _consistent(sums[slot])
    assert all(v == 0 for s in cpu_decode.claim_trace(traced).values() for v in s.values())


def test_products_outside_a_step_are_counted_apart():
    traced = cpu_decode.variant(["PLAIT_CLAIM_TRACE"])
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(1024, 576, generator=gen), torch.randn(1, 576, generator=gen)
    expected = torch.empty(1, 1024)
    assert cpu_decode.gemv(cpu_decode.library(), cpu_decode.DT_F32, w, x, expected) == 0
    cpu_decode.claim_trace(traced)  # cleared
    for _ in range(12):
        y = torch.empty(1, 1024)
        assert cpu_decode.gemv(traced, cpu_decode.DT_F32, w, x, y, threads=2) == 0
        assert torch.equal(y, expected)
    sums = cpu_decode.claim_trace(traced)
    assert sums["other"]["phases"] == 12
    assert all(v == 0 for slot, s in sums.items() if slot != "other" for v in s.values())
    _consistent(sums["other"])
