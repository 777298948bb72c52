"""The worker's core on a tiny random model."""

from __future__ import annotations

import random

import pytest
import torch

from plait.runtime.config import EngineConfig
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore


def generate(core: EngineCore, prompts: list[list[int]], new: int) -> dict[str, list[int]]:
    params = SamplingParams.from_dict({"max_new_tokens": new, "temperature": 0})
    for i, ids in enumerate(prompts):
        core.add_request(f"r{i}", ids, params)
    out: dict[str, list[int]] = {}
    while core.has_work:
        for o in core.step():
            out[o.rid] = out.get(o.rid, [])[: o.start] + o.new_ids
    return out


def test_owning_the_process_changes_no_token(tiny_model_dir):
    """``own_process`` (the worker's, the in-process server's) pins torch's threads and turns
    the fused step's address check off; greedy tokens stay those of a core that does not."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 320) for _ in range(n)] for n in (1, 5, 30)]
    before = torch.get_num_threads()
    try:
        config = EngineConfig.from_kwargs(tiny_model_dir("llama"), max_total_tokens=1024)
        plain, owned = EngineCore(config), EngineCore(config)
        owned.own_process()
        assert owned.runner.pin_torch_threads
        if owned.runner.fused is not None:
            assert not owned.runner.fused.check_addresses
        expected = generate(plain, prompts, 12)
        assert generate(owned, prompts, 12) == expected
        owned.check_idle()
    finally:
        torch.set_num_threads(before)


def test_owned_checks_the_fused_step_once_on_entry_and_restores_on_exit(tiny_model_dir):
    """``owned`` (an in-process engine's non-streamed generate): a weight replaced before it
    is seen; inside, no per-call check and torch's threads pinned; on exit, both as before."""
    core = EngineCore(EngineConfig.from_kwargs(tiny_model_dir("llama"), max_total_tokens=1024))
    fused = core.runner.fused
    if fused is None:
        pytest.skip("no fused decode step on this machine")
    threads = torch.get_num_threads()
    head = core.runner.model.lm_head
    head.weight.data = torch.zeros_like(head.weight)  # every logit 0: greedy picks token 0
    with core.owned():
        assert not fused.check_addresses and core.runner.pin_torch_threads
        out = generate(core, [[5, 6, 7], [8]], 4)
    assert all(set(ids) == {0} for ids in out.values())
    assert fused.check_addresses and not core.runner.pin_torch_threads
    assert torch.get_num_threads() == threads
