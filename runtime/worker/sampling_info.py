"""A batch's sampling parameters as tensors: what the sampler reads each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.penalties import token_counts

if TYPE_CHECKING:
    from plait.constrained.mask import VocabMask

_SEED_MAX = 2**63 - 1


def draw_seed() -> int:
    """A sampling seed from torch's global generator, for a request that gave none."""
    return int(torch.randint(0, _SEED_MAX, ()))


@dataclass(slots=True)
class SamplingBatchInfo:
    """Per-row sampling parameters of one batch as tensors.

    Greedy rows carry temperature 1 and top-k 1 and are answered by argmax; the ``need_*`` flags
    look at the sampling (non-greedy) rows only, so a stage runs only when some row needs it.
    Penalties and min-token masks apply to every row, greedy ones included.
    """

    temperatures: torch.Tensor  # float32 [B, 1]
    top_ps: torch.Tensor  # float32 [B]
    top_ks: torch.Tensor  # int64 [B], in [1, V]
    min_ps: torch.Tensor  # float32 [B]
    frequency_penalties: torch.Tensor  # float32 [B, 1]
    presence_penalties: torch.Tensor  # float32 [B, 1]
    repetition_penalties: torch.Tensor  # float32 [B, 1]
    output_counts: torch.Tensor | None  # float32 [B, V], output tokens only
    repetition_seen: torch.Tensor | None  # bool [B, V], prompt and output tokens
    # (min_tokens_rows[i], min_tokens_ids[i]): EOS / stop ids banned below min_new_tokens
    min_tokens_rows: torch.Tensor | None  # int64 [N]
    min_tokens_ids: torch.Tensor | None  # int64 [N]
    # logits[bias_rows[i], bias_ids[i]] += bias_values[i]: OpenAI / SGLang ``logit_bias``
    bias_rows: torch.Tensor | None  # int64 [M]
    bias_ids: torch.Tensor | None  # int64 [M]
    bias_values: torch.Tensor | None  # float32 [M]
    greedy_rows: torch.Tensor | None  # bool [B]; None when no row or every row is greedy
    seeds: torch.Tensor  # int64 [B]
    steps: torch.Tensor  # int64 [B], the output position being sampled
    is_all_greedy: bool
    need_top_p: bool
    need_top_k: bool
    need_min_p: bool
    need_penalties: bool
    need_min_tokens: bool
    max_top_k: int  # over the sampling rows; V when none truncates
    max_top_logprobs: int
    return_logprob: bool
    vocab_mask: VocabMask | None = None  # grammar constraints, applied before the penalties

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        output_ids: list[list[int]],
        prompt_ids: list[list[int]],
        *,
        eos_token_ids: list[int],
        vocab_size: int,
        device: torch.device | str,
        seeds: list[int] | None = None,
    ) -> SamplingBatchInfo:
        """From scratch. ``seeds`` gives every row's seed; without it, rows whose ``seed`` is
        None get a fresh seed from torch's global generator."""
        assert len(params) == len(output_ids) == len(prompt_ids)
        output_counts = repetition_seen = None
        freq_pres, repetition = penalized_rows(params)
        if any(freq_pres):
            rows = [o if f else [] for o, f in zip(output_ids, freq_pres)]
            output_counts = token_counts(rows, vocab_size, device)
        if any(repetition):
            rows = [p + o if r else [] for p, o, r in zip(prompt_ids, output_ids, repetition)]
            repetition_seen = token_counts(rows, vocab_size, device) > 0
        if seeds is None:
            row_seeds = torch.tensor([-1 if p.seed is None else p.seed for p in params])
            if any(p.seed is None for p in params):
                drawn = torch.randint(0, _SEED_MAX, row_seeds.shape)
                row_seeds = torch.where(row_seeds < 0, drawn, row_seeds)
        else:
            row_seeds = torch.tensor(seeds, dtype=torch.int64)
        return cls.from_rows(
            params,
            [len(o) for o in output_ids],
            row_seeds,
            output_counts,
            repetition_seen,
            eos_token_ids=eos_token_ids,
            vocab_size=vocab_size,
            device=device,
        )

    @classmethod
    def from_rows(
        cls,
        params: list[SamplingParams],
        output_lens: list[int],
        seeds: torch.Tensor,
        output_counts: torch.Tensor | None,
        repetition_seen: torch.Tensor | None,
        *,
        eos_token_ids: list[int],
        vocab_size: int,
        device: torch.device | str,
    ) -> SamplingBatchInfo:
        """Everything but the penalty state, which the caller counted (``build``) or carried
        over from the previous step (``SamplingBatch``)."""
        greedy = [p.is_greedy for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]

        def floats(values: list[float], col: bool = False) -> torch.Tensor:
            t = torch.tensor(values, dtype=torch.float32, device=device)
            return t[:, None] if col else t

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        top_ks = [
            1 if g else (vocab_size if p.top_k < 0 else min(p.top_k, vocab_size))
            for p, g in zip(params, greedy)
        ]
        sampled_ks = [k for k, g in zip(top_ks, greedy) if not g]
        ban_rows: list[int] = []
        ban_ids: list[int] = []
        for i, (p, n) in enumerate(zip(params, output_lens)):
            # a grammar holds stop tokens back itself, where it allows other tokens too
            # (GrammarState.fill_bitmask): a ban here could leave no token
            if n < p.min_new_tokens and not p.is_constrained:
                banned = set(eos_token_ids) | set(p.stop_token_ids)
                ban_rows += [i] * len(banned)
                ban_ids += banned
        bias_rows: list[int] = []
        bias_ids: list[int] = []
        bias_values: list[float] = []
        for i, p in enumerate(params):
            for tid, value in p.logit_bias_items():
                bias_rows.append(i)
                bias_ids.append(tid)
                bias_values.append(value)
        is_all_greedy = all(greedy)
        return cls(
            temperatures=floats(
                [1.0 if g else p.temperature for p, g in zip(params, greedy)], True
            ),
            top_ps=floats([1.0 if g else p.top_p for p, g in zip(params, greedy)]),
            top_ks=ints(top_ks),
            min_ps=floats([0.0 if g else p.min_p for p, g in zip(params, greedy)]),
            frequency_penalties=floats([p.frequency_penalty for p in params], True),
            presence_penalties=floats([p.presence_penalty for p in params], True),
            repetition_penalties=floats([p.repetition_penalty for p in params], True),
            output_counts=output_counts,
            repetition_seen=repetition_seen,
            min_tokens_rows=ints(ban_rows) if ban_rows else None,
            min_tokens_ids=ints(ban_ids) if ban_rows else None,
            bias_rows=ints(bias_rows) if bias_rows else None,
            bias_ids=ints(bias_ids) if bias_rows else None,
            bias_values=floats(bias_values) if bias_rows else None,
            greedy_rows=None
            if is_all_greedy or not any(greedy)
            else torch.tensor(greedy).to(device),
            seeds=seeds.to(device),
            steps=ints(output_lens),
            is_all_greedy=is_all_greedy,
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_top_k=any(k < vocab_size for k in sampled_ks),
            max_top_k=max(sampled_ks, default=vocab_size),
            need_min_p=any(p.min_p > 0.0 for p in sampled),
            need_penalties=output_counts is not None or repetition_seen is not None,
            need_min_tokens=bool(ban_rows),
            max_top_logprobs=max(
                (p.top_logprobs_num for p in params if p.return_logprob), default=0
            ),
            return_logprob=any(p.return_logprob for p in params),
        )


def penalized_rows(params: list[SamplingParams]) -> tuple[list[bool], list[bool]]:
    """Which rows count their outputs (frequency / presence) and which track every token they
    have seen (repetition)."""
    freq_pres = [p.frequency_penalty != 0 or p.presence_penalty != 0 for p in params]
    return freq_pres, [p.repetition_penalty != 1.0 for p in params]
