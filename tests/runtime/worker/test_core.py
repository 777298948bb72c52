"""The worker's core on a tiny random model."""

from __future__ import annotations

import random

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
