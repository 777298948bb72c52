"""The engine against transformers' own implementation on tiny random models."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from plait.runtime.engine import Engine


def _hf_greedy(model_dir, prompts, max_new_tokens):
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for p in prompts:
        with torch.no_grad():
            seq = hf.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        outs.append(seq[0, len(p) :].tolist())
    return outs


def _prompts(n, seed=0, vocab=320):
    rng = random.Random(seed)
    lengths = [1, 3, 7, 16, 31, 50, 77, 120][:n]
    return [[rng.randrange(3, vocab) for _ in range(k)] for k in lengths]


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "qwen2"])
@pytest.mark.parametrize("chunk", [None, 8])
def test_greedy_matches_transformers(tiny_model_dir, kind, chunk):
    model_dir = tiny_model_dir(kind)
    prompts = _prompts(8)
    ref = _hf_greedy(model_dir, prompts, 24)
    engine = Engine(model_dir, max_total_tokens=4096, chunked_prefill_size=chunk)
    outs = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": 24, "temperature": 0}
    )
    assert [o["output_ids"] for o in outs] == ref
    engine.check_idle()
    # again: now every prompt's prefix (and its generated tokens) is in the radix cache
    outs2 = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": 24, "temperature": 0}
    )
    assert [o["output_ids"] for o in outs2] == ref
    assert sum(o["meta_info"]["cached_tokens"] for o in outs2) > 0
    engine.check_idle()


@pytest.mark.parametrize("kind", ["llama3-rope", "linear-rope", "mistral"])
def test_other_family_members_match_transformers(tiny_model_dir, kind):
    """Llama 3 and linear rope scaling (prompts past the original context), Mistral."""
    model_dir = tiny_model_dir(kind)
    prompts = _prompts(8)
    ref = _hf_greedy(model_dir, prompts, 16)
    engine = Engine(model_dir, max_total_tokens=4096)
    outs = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0}
    )
    assert [o["output_ids"] for o in outs] == ref


def test_shared_prefix_batch_matches_transformers(tiny_model_dir):
    """Requests sharing a long cached prefix decode through the shared-prefix attention path."""
    model_dir = tiny_model_dir("llama")
    rng = random.Random(7)
    shared = [rng.randrange(3, 320) for _ in range(48)]
    prompts = [
        shared + [rng.randrange(3, 320) for _ in range(rng.randrange(1, 12))] for _ in range(8)
    ]
    ref = _hf_greedy(model_dir, prompts, 24)
    engine = Engine(model_dir, max_total_tokens=4096)
    outs = engine.generate(
        input_ids=prompts, sampling_params={"max_new_tokens": 24, "temperature": 0}
    )
    assert [o["output_ids"] for o in outs] == ref
    assert sum(o["meta_info"]["cached_tokens"] for o in outs) >= 7 * 48
    engine.check_idle()


def test_generation_leaves_the_thread_count_alone(tiny_model_dir):
    """Single-token forwards run on one thread and restore the caller's setting."""
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=1024)
    before = torch.get_num_threads()
    engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 4})
    assert torch.get_num_threads() == before


def test_in_process_steps_run_torch_on_one_thread_with_the_callers_ceiling(tiny_model_dir):
    """Where plait's own pool does the products, a step's torch ops (sampling included) run
    on one thread, the fused forward gets the caller's count, and the caller's is back after."""
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=1024)
    runner = engine.core.runner
    if runner.fused is None:
        pytest.skip("no C compiler: the fused step is off")
    runner.adaptive_threads = False  # the caller's count, not the policy's pick
    seen: list[tuple[int, int]] = []
    fused_forward = runner.fused.forward

    def forward(batch, threads, *rest):
        seen.append((torch.get_num_threads(), threads))
        return fused_forward(batch, threads, *rest)

    runner.fused.forward = forward
    sampling: list[int] = []
    scheduler = engine.core.scheduler
    sample = scheduler._sample

    def traced_sample(reqs, logits, *rest):
        sampling.append(torch.get_num_threads())
        return sample(reqs, logits, *rest)

    scheduler._sample = traced_sample
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 4})
        assert seen and set(seen) == {(1, 2)}
        assert sampling and set(sampling) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_mixed_chunk_batches_match_separate_forwards(tiny_model_dir):
    """Decodes riding along in prefill forwards give the same tokens as separate forwards."""
    model_dir = tiny_model_dir("llama")
    prompts = _prompts(8, seed=3)
    ref = _hf_greedy(model_dir, prompts, 20)
    outs, mixed_forwards = {}, {}
    for mixed in (True, False):
        engine = Engine(
            model_dir, max_total_tokens=4096, chunked_prefill_size=32, enable_mixed_chunk=mixed
        )
        res = engine.generate(
            input_ids=prompts, sampling_params={"max_new_tokens": 20, "temperature": 0}
        )
        outs[mixed] = [o["output_ids"] for o in res]
        mixed_forwards[mixed] = engine.scheduler.stats.mixed_forward_count
        engine.check_idle()
    assert outs[True] == ref
    assert outs[False] == ref
    assert mixed_forwards[True] > 0
    assert mixed_forwards[False] == 0
