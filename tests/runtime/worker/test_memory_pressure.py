"""Under a KV pool far too small for the load, nothing is dropped and nothing is corrupted."""

from __future__ import annotations

import random

import pytest

from plait.runtime.engine import Engine


@pytest.mark.parametrize("policy", ["lpm", "fcfs", "dfs-weight"])
def test_64_requests_in_a_tiny_pool_match_their_solo_outputs(tiny_model_dir, policy):
    rng = random.Random(1)
    shared = [rng.randrange(3, 320) for _ in range(24)]
    prompts = []
    for i in range(64):
        own = [rng.randrange(3, 320) for _ in range(rng.randrange(1, 40))]
        prompts.append(shared + own if i % 2 else own)
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}

    solo_engine = Engine(tiny_model_dir("llama"), max_total_tokens=4096, disable_radix_cache=True)
    solo = [
        solo_engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts
    ]

    engine = Engine(
        tiny_model_dir("llama"),
        max_total_tokens=400,
        chunked_prefill_size=32,
        schedule_policy=policy,
    )
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    assert len(outs) == 64
    assert [o["output_ids"] for o in outs] == solo
    assert all(o["meta_info"]["finish_reason"]["type"] == "length" for o in outs)
    assert engine.scheduler.stats.retractions > 0, "the pool was meant to force retraction"
    engine.check_idle()
