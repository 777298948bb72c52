from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.penalties import (
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
    token_counts,
)
from plait.runtime.worker.sampler import (
    Sampler,
    SamplingBatchInfo,
    apply_logit_processors,
    argmax_rows,
    uniform_noise,
)

EOS = [0]


def build(
    params: list[SamplingParams],
    vocab_size: int,
    outputs: list[list[int]] | None = None,
    prompts: list[list[int]] | None = None,
    eos: list[int] = EOS,
) -> SamplingBatchInfo:
    outputs = outputs if outputs is not None else [[] for _ in params]
    prompts = prompts if prompts is not None else [[1] for _ in params]
    return SamplingBatchInfo.build(
        params, outputs, prompts, eos_token_ids=eos, vocab_size=vocab_size, device="cpu"
    )


def sample_many(logits_row: torch.Tensor, n: int, **kw) -> torch.Tensor:
    """n draws from one distribution: n rows with seeds 0..n-1."""
    params = [SamplingParams(seed=s, **kw) for s in range(n)]
    info = build(params, logits_row.numel())
    return Sampler()(logits_row.expand(n, -1).contiguous(), info, False).next_token_ids


def chi_square(draws: torch.Tensor, probs: torch.Tensor, support: list[int] | None = None) -> float:
    """Pearson's statistic of the draws against probs, over the ids in support (default all)."""
    support = support if support is not None else list(range(probs.numel()))
    observed = torch.bincount(draws, minlength=probs.numel()).double()[support]
    expected = probs.double()[support] * draws.numel()
    return float(((observed - expected) ** 2 / expected).sum())


# chi-square 99.99% quantile with 7 degrees of freedom (vocab of 8)
CHI2_7DF = 29.9


def test_greedy_is_argmax() -> None:
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(0))
    info = build([SamplingParams(temperature=0.0) for _ in range(16)], 100)
    assert info.is_all_greedy
    out = Sampler()(logits, info, False)
    assert torch.equal(out.next_token_ids, logits.argmax(-1))


def test_argmax_rows_is_torch_argmax_with_ties_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0],  # a tie: the first maximum
            [nan, 1.0, nan, 5.0],  # a NaN counts as the maximum
            [-inf, -inf, -inf, -inf],
            [1.0, 2.0, inf, inf],
        ]
    )
    for rows in (logits, logits.flip(-1), logits.t().contiguous().t()):
        got = argmax_rows(rows)
        assert got.dtype == torch.int64 and torch.equal(got, rows.argmax(dim=-1))
    assert torch.equal(argmax_rows(logits.bfloat16()), logits.bfloat16().argmax(dim=-1))
    assert argmax_rows(torch.empty(0, 4)).shape == (0,)


def test_greedy_rows_in_mixed_batch_are_argmax() -> None:
    logits = torch.randn(12, 100, generator=torch.Generator().manual_seed(1))
    params = [
        SamplingParams(temperature=0.0) if i % 3 == 0 else SamplingParams(seed=i, temperature=2.0)
        for i in range(12)
    ]
    info = build(params, 100)
    assert not info.is_all_greedy
    out = Sampler()(logits, info, False).next_token_ids
    greedy = torch.arange(12) % 3 == 0
    assert torch.equal(out[greedy], logits.argmax(-1)[greedy])
    assert not torch.equal(out[~greedy], logits.argmax(-1)[~greedy])


def test_top_k_one_is_argmax() -> None:
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(top_k=1, temperature=1.5, seed=i) for i in range(8)]
    out = Sampler()(logits, build(params, 50), False)
    assert torch.equal(out.next_token_ids, logits.argmax(-1))


def test_top_k_never_leaves_the_top_k() -> None:
    logits = torch.randn(200, generator=torch.Generator().manual_seed(3))
    draws = sample_many(logits, 3000, top_k=5, temperature=3.0)
    assert set(draws.tolist()) == set(logits.topk(5).indices.tolist())


def test_top_p_picks_only_the_nucleus() -> None:
    probs = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
    draws = sample_many(probs.log(), 2000, top_p=0.7)
    assert set(draws.tolist()) == {1, 3}
    assert set(sample_many(probs.log(), 2000, top_p=0.3).tolist()) == {1}


def test_min_p_excludes_tokens_below_the_threshold() -> None:
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    draws = sample_many(probs.log(), 3000, min_p=0.3)  # keeps p >= 0.12
    assert set(draws.tolist()) == {1, 3, 4}


def test_top_k_top_p_min_p_combined_stay_in_bounds() -> None:
    logits = torch.randn(64, generator=torch.Generator().manual_seed(4))
    draws = sample_many(logits, 2000, top_k=10, top_p=0.8, min_p=0.05, temperature=1.3)
    assert set(draws.tolist()) <= set(logits.topk(10).indices.tolist())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_frequencies_match_the_distribution_over_seeds(temperature: float) -> None:
    logits = torch.randn(8, generator=torch.Generator().manual_seed(5))
    draws = sample_many(logits, 20_000, temperature=temperature)
    assert chi_square(draws, torch.softmax(logits / temperature, -1)) < CHI2_7DF


def test_sampled_frequencies_match_the_distribution_over_steps() -> None:
    logits = torch.randn(8, generator=torch.Generator().manual_seed(6))
    n = 20_000
    info = build([SamplingParams(seed=7)] * n, 8)
    info.steps = torch.arange(n)  # one request, n consecutive output positions
    draws = Sampler()(logits.expand(n, -1).contiguous(), info, False).next_token_ids
    assert chi_square(draws, torch.softmax(logits, -1)) < CHI2_7DF


def test_lower_temperature_sharpens() -> None:
    logits = torch.randn(8, generator=torch.Generator().manual_seed(8))
    top = int(logits.argmax())
    hot = (sample_many(logits, 20_000, temperature=1.0) == top).float().mean()
    cold = (sample_many(logits, 20_000, temperature=0.5) == top).float().mean()
    assert cold > hot + 0.05
    assert abs(float(cold) - float(torch.softmax(logits / 0.5, -1)[top])) < 0.02


def test_same_seed_and_step_give_the_same_token_alone_or_in_a_batch() -> None:
    gen = torch.Generator().manual_seed(9)
    vocab, sampler = 500, Sampler()
    for trial in range(24):
        row = torch.randn(1, vocab, generator=gen)
        # even trials: every row truncates (the batch takes top-k); odd: some do not (full sort)
        top_k = 30 if trial % 2 == 0 else -1
        target = SamplingParams(
            seed=1000 + trial, temperature=1.2, top_k=top_k, min_p=0.01 * (trial % 3)
        )
        output = [3] * trial
        alone = sampler(row, build([target], vocab, [output]), False).next_token_ids[0]

        others = [
            SamplingParams(
                seed=None if i % 4 == 0 else i,
                top_k=(20 if i % 2 else 50) if trial % 2 == 0 else (20 if i % 2 else -1),
                top_p=0.9,
                temperature=0.7,
                frequency_penalty=0.5 * (i % 3),
            )
            for i in range(31)
        ]
        pos = trial % 32
        params = others[:pos] + [target] + others[pos:]
        outputs = [[int(x) for x in torch.randint(0, vocab, (i % 5,))] for i in range(31)]
        outputs = outputs[:pos] + [output] + outputs[pos:]
        logits = torch.randn(32, vocab, generator=gen)
        logits[pos] = row[0]
        batched = sampler(logits, build(params, vocab, outputs), False).next_token_ids[pos]
        assert int(batched) == int(alone)


@pytest.mark.parametrize(
    ("kw", "kept"),
    [
        ({"top_k": 4}, [0, 1, 2, 3]),
        ({"top_p": 0.75}, [0, 1, 2]),
        ({"top_k": 3, "top_p": 0.7}, [0, 1]),
    ],
)
def test_truncated_distribution_is_renormalized(kw: dict, kept: list[int]) -> None:
    probs = torch.tensor([0.35, 0.25, 0.2, 0.1, 0.05, 0.03, 0.01, 0.01])
    draws = sample_many(probs.log(), 20_000, **kw)
    expected = torch.zeros(8)
    expected[kept] = probs[kept] / probs[kept].sum()
    assert set(draws.tolist()) == set(kept)
    # top-p applies to the top-k renormalized (HF order): with top_k=3, 0.6 / 0.8 > 0.7 drops id 2
    assert chi_square(draws, expected, kept) < 21.1  # 99.99% quantile, 3 degrees of freedom


def test_different_seeds_or_steps_give_different_tokens() -> None:
    vocab = 1000
    logits = torch.zeros(1, vocab)
    by_seed = {
        int(Sampler()(logits, build([SamplingParams(seed=s)], vocab), False).next_token_ids[0])
        for s in range(30)
    }
    by_step = {
        int(
            Sampler()(
                logits, build([SamplingParams(seed=1)], vocab, [[2] * t]), False
            ).next_token_ids[0]
        )
        for t in range(30)
    }
    assert len(by_seed) > 25 and len(by_step) > 25


def test_unseeded_rows_follow_torch_global_generator() -> None:
    logits = torch.zeros(1, 1000)
    torch.manual_seed(0)
    a = [
        int(Sampler()(logits, build([SamplingParams()], 1000), False).next_token_ids[0])
        for _ in range(5)
    ]
    torch.manual_seed(0)
    b = [
        int(Sampler()(logits, build([SamplingParams()], 1000), False).next_token_ids[0])
        for _ in range(5)
    ]
    assert a == b and len(set(a)) > 1


def _splitmix64_reference(x: int) -> int:
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_noise_is_a_wrapping_64_bit_hash_in_the_open_unit_interval() -> None:
    g = 0x9E3779B97F4A7C15
    seeds = [0, 1, 2**62 + 12345, 2**63 - 1]
    steps = [0, 7, 123456, 3]
    u = uniform_noise(torch.tensor(seeds), torch.tensor(steps), torch.arange(6))
    for b, (seed, step) in enumerate(zip(seeds, steps)):
        key = _splitmix64_reference(_splitmix64_reference(seed) + step * g)
        for t in range(6):
            bits = _splitmix64_reference(key + (t + 1) * g)
            assert float(u[b, t]) == ((bits >> 11) + 0.5) * 2.0**-53
    big = uniform_noise(torch.arange(64), torch.zeros(64, dtype=torch.int64), torch.arange(4096))
    assert bool((big > 0).all() and (big < 1).all())
    assert abs(float(big.mean()) - 0.5) < 0.005


def test_token_counts_pads_rows_of_any_length() -> None:
    rows = [[1, 1, 4], [], [4, 4, 4, 4, 0]]
    counts = token_counts(rows, 6, "cpu")
    for i, row in enumerate(rows):
        expected = Counter(row)
        assert counts[i].tolist() == [float(expected[t]) for t in range(6)]


def test_frequency_and_presence_penalties() -> None:
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(10))
    counts = token_counts([[2, 2, 2, 5], [1]], 6, "cpu")
    freq, pres = torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.25], [1.5]])
    out = logits.clone()
    apply_frequency_presence_penalties(out, counts, freq, pres)
    expected = logits.clone()
    expected[0, 2] -= 0.5 * 3 + 0.25
    expected[0, 5] -= 0.5 * 1 + 0.25
    expected[1, 1] -= -1.0 * 1 + 1.5
    torch.testing.assert_close(out, expected)


def test_frequency_penalty_counts_output_not_prompt() -> None:
    logits = torch.zeros(1, 6)
    info = build([SamplingParams(frequency_penalty=1.0)], 6, outputs=[[3, 3]], prompts=[[4, 4]])
    out = apply_logit_processors(logits, info)
    assert out[0].tolist() == [0.0, 0.0, 0.0, -2.0, 0.0, 0.0]
    assert logits.abs().sum() == 0  # the caller's logits are untouched


def test_repetition_penalty_matches_transformers() -> None:
    gen = torch.Generator().manual_seed(11)
    vocab = 40
    logits = torch.randn(3, vocab, generator=gen) * 3
    prompts = [[1, 2, 3, 3], [5], [7, 8]]
    outputs = [[4, 1], [6, 6, 9], []]
    penalties = [1.3, 0.7, 1.9]
    params = [SamplingParams(repetition_penalty=p, temperature=0.0) for p in penalties]
    ours = apply_logit_processors(logits, build(params, vocab, outputs, prompts))
    for i, penalty in enumerate(penalties):
        ids = torch.tensor([prompts[i] + outputs[i]])
        theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], theirs)


def test_repetition_penalty_direct() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    apply_repetition_penalty(logits, seen, torch.tensor([[2.0]]))
    assert logits.tolist() == [[1.0, -4.0, 1.0]]


def test_min_new_tokens_blocks_eos_and_stop_ids_until_reached() -> None:
    vocab = 10
    logits = torch.zeros(1, vocab)
    logits[0, 0], logits[0, 1], logits[0, 5] = 30.0, 20.0, 10.0  # eos 0 and 1, stop id 5
    params = SamplingParams(min_new_tokens=3, stop_token_ids=[5], temperature=0.0)
    for produced in range(3):
        info = build([params], vocab, outputs=[[2] * produced], eos=[0, 1])
        assert info.need_min_tokens
        assert int(Sampler()(logits, info, False).next_token_ids[0]) not in {0, 1, 5}
        sampled = [SamplingParams(seed=s, min_new_tokens=3, stop_token_ids=[5]) for s in range(500)]
        info = build(sampled, vocab, outputs=[[2] * produced] * 500, eos=[0, 1])
        draws = Sampler()(logits.expand(500, -1), info, False).next_token_ids
        assert not set(draws.tolist()) & {0, 1, 5}
    info = build([params], vocab, outputs=[[2] * 3], eos=[0, 1])
    assert not info.need_min_tokens
    assert int(Sampler()(logits, info, False).next_token_ids[0]) == 0


def test_ignore_eos_leaves_logits_alone() -> None:
    logits = torch.randn(1, 10)
    info = build([SamplingParams(ignore_eos=True, temperature=0.0)], 10)
    assert torch.equal(apply_logit_processors(logits, info), logits)


def test_logprobs_are_under_the_raw_distribution() -> None:
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(4, 300, generator=gen)
    params = [
        SamplingParams(seed=1, temperature=0.5, return_logprob=True, top_logprobs_num=3),
        SamplingParams(seed=2, top_k=5, frequency_penalty=2.0, return_logprob=True),
        SamplingParams(
            temperature=0.0, repetition_penalty=1.5, return_logprob=True, top_logprobs_num=5
        ),
        SamplingParams(seed=3, top_logprobs_num=20),  # asks no logprobs: does not widen k
    ]
    outputs = [[1, 2], [3, 3], [4], []]
    info = build(params, 300, outputs)
    assert info.max_top_logprobs == 5
    out = Sampler()(logits, info, True)
    raw = torch.log_softmax(logits, -1)
    torch.testing.assert_close(out.logprobs, raw.gather(1, out.next_token_ids[:, None]).squeeze(1))
    top = raw.topk(5)
    torch.testing.assert_close(out.top_logprobs, top.values)
    assert torch.equal(out.top_logprob_ids, top.indices)
    assert bool((out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all())


def test_no_logprobs_unless_asked() -> None:
    logits = torch.randn(2, 50)
    info = build([SamplingParams(seed=1), SamplingParams(temperature=0.0)], 50)
    out = Sampler()(logits, info, False)
    assert out.logprobs is None and out.top_logprobs is None and out.top_logprob_ids is None
    out = Sampler()(logits, info, True)
    assert out.logprobs is not None and out.top_logprobs is None


def test_stage_flags_look_only_at_rows_that_need_them() -> None:
    params = [
        SamplingParams(temperature=0.0, top_p=0.5, min_p=0.2),  # greedy: truncation is moot
        SamplingParams(seed=1, top_k=2000),  # larger than the vocabulary
    ]
    info = build(params, 100)
    assert not (info.need_top_k or info.need_top_p or info.need_min_p or info.need_penalties)
    assert info.top_ks.tolist() == [1, 100]
    assert info.temperatures.tolist() == [[1.0], [1.0]]
    assert info.steps.tolist() == [0, 0]
    assert info.greedy_rows is not None and info.greedy_rows.tolist() == [True, False]
