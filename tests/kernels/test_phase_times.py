"""``cpu_decode.variant``: a build with ``-DPLAIT_PHASE_TIMES`` (bench/bench_step_phases.py)
computes the same logits as the default build and adds up each part of the step's time, which
the default build does not have at all."""

from __future__ import annotations

import ctypes

import pytest
import torch

from plait.kernels import cpu_decode
from tests.runtime.model.test_fused_decode import _State

PARTS = len(cpu_decode.STEP_PARTS)  # PH_COUNT


@pytest.mark.skipif(cpu_decode.library() is None, reason="no fused decode step here")
def test_the_phase_timed_build_computes_the_same_step_and_times_its_parts(tiny_model_dir):
    assert not hasattr(cpu_decode.library(), "plait_phase_times")
    timed = cpu_decode.variant(["PLAIT_PHASE_TIMES"])
    state = _State(tiny_model_dir("llama"), "float32", [5, 17, 3])
    batch = state.decode_batch([0, 1, 2], [7, 8, 9])
    expected = state.fused_step(batch)
    times = (ctypes.c_double * PARTS)()
    timed.plait_phase_times(times)  # cleared
    assert torch.equal(state.fused_step_on(timed, batch), expected)
    timed.plait_phase_times(times)
    assert all(t >= 0 for t in times) and sum(times) > 0
    timed.plait_phase_times(times)  # read and cleared
    assert sum(times) == 0
