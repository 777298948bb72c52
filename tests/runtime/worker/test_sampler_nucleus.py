"""Top-p without a vocabulary sort: sampling among the top candidates must give exactly the
tokens the full sort gives, and fall back to the sort whenever it could not."""

from __future__ import annotations

import pytest
import torch

import plait.runtime.worker.sampler as sampler_module
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.sampler import Sampler, SamplingBatchInfo, _nucleus_candidates

VOCAB = 4096


def lm_like_logits(rows: int, seed: int, scale: float) -> torch.Tensor:
    """Peaked rows like a language model's: a few likely tokens over a long tail."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=g)
    head = torch.randint(0, VOCAB, (rows, 8), generator=g)
    logits.scatter_add_(1, head, torch.rand(rows, 8, generator=g) * scale)
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams], candidates: int) -> torch.Tensor:
    info = SamplingBatchInfo.build(
        params,
        [[] for _ in params],
        [[1] for _ in params],
        eos_token_ids=[0],
        vocab_size=VOCAB,
        device="cpu",
    )
    old = sampler_module.NUCLEUS_CANDIDATES
    sampler_module.NUCLEUS_CANDIDATES = candidates
    try:
        return Sampler()(logits, info, False).next_token_ids
    finally:
        sampler_module.NUCLEUS_CANDIDATES = old


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_candidates_give_the_tokens_of_a_full_sort(top_p: float) -> None:
    logits = lm_like_logits(64, seed=1, scale=24.0)
    params = [
        SamplingParams(temperature=0.8, top_p=top_p, seed=s, min_p=0.01 * (s % 2))
        for s in range(64)
    ]
    params[3] = SamplingParams(temperature=0)  # a greedy row rides along
    probe = SamplingBatchInfo.build(
        params, [[]] * 64, [[1]] * 64, eos_token_ids=[0], vocab_size=VOCAB, device="cpu"
    )
    probs = torch.softmax(logits / probe.temperatures, dim=-1)
    assert _nucleus_candidates(probs, probe) is not None  # the fast path is what runs
    fast = sample(logits, params, candidates=256)
    full = sample(logits, params, candidates=VOCAB)  # forces the sort
    assert torch.equal(fast, full)


def test_candidates_are_used_only_when_they_cover_every_sampling_row() -> None:
    peaked = lm_like_logits(4, seed=2, scale=12.0)
    flat = torch.zeros(4, VOCAB)

    def info(top_ps: list[float]) -> SamplingBatchInfo:
        params = [SamplingParams(temperature=1.0, top_p=p, seed=0) for p in top_ps]
        return SamplingBatchInfo.build(
            params, [[]] * 4, [[1]] * 4, eos_token_ids=[0], vocab_size=VOCAB, device="cpu"
        )

    probs = torch.softmax(peaked, dim=-1)
    assert _nucleus_candidates(probs, info([0.9] * 4)) is not None
    # a row without top-p keeps its whole tail: the candidates cannot hold it
    assert _nucleus_candidates(probs, info([0.9, 0.9, 0.9, 1.0])) is None
    # a flat distribution's nucleus is far larger than the candidates
    assert _nucleus_candidates(torch.softmax(flat, dim=-1), info([0.9] * 4)) is None


def test_a_flat_row_falls_back_to_the_sort_and_still_matches() -> None:
    logits = lm_like_logits(16, seed=3, scale=12.0)
    logits[5] = 0.0  # uniform: its 0.9-nucleus spans ~3,700 tokens
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=s) for s in range(16)]
    assert torch.equal(sample(logits, params, 256), sample(logits, params, VOCAB))


def test_the_nucleus_is_measured_against_the_whole_row_not_the_candidates() -> None:
    # a, b, c hold 0.95; 0.05 is spread over the rest. With top_p 0.8 the mass before c is
    # 0.78 < 0.8 of the whole row, so c stays; measured against the candidates alone (~0.953)
    # it would go.
    probs = torch.full((VOCAB,), 0.05 / (VOCAB - 3))
    probs[:3] = torch.tensor([0.5, 0.28, 0.17])
    n = 400
    logits = probs.log().expand(n, -1).contiguous()
    params = [SamplingParams(temperature=1.0, top_p=0.8, seed=s) for s in range(n)]
    probe = SamplingBatchInfo.build(
        params, [[]] * n, [[1]] * n, eos_token_ids=[0], vocab_size=VOCAB, device="cpu"
    )
    assert _nucleus_candidates(torch.softmax(logits, dim=-1), probe) is not None
    drawn = set(sample(logits, params, candidates=256).tolist())
    assert drawn == {0, 1, 2}
