"""Batched next-token sampling: penalties, temperature, top-k / top-p / min-p, seeded draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.penalties import (
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
    token_counts,
)

if TYPE_CHECKING:
    from plait.constrained.mask import VocabMask

_SEED_MAX = 2**63 - 1


def _int64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _int64(0x9E3779B97F4A7C15)
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int, out: torch.Tensor) -> torch.Tensor:
    # torch's >> on int64 sign-extends; masking the top s bits makes it a logical shift.
    torch.bitwise_right_shift(x, s, out=out)
    return out.bitwise_and_((1 << (64 - s)) - 1)


def _mix64_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        x.bitwise_xor_(_shr(x, shift, tmp))
        if mult is not None:
            x.mul_(mult)
    return x


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer on int64 tensors (wrapping arithmetic): a bijection on 64 bits."""
    return _mix64_(x.clone(), torch.empty_like(x))


def uniform_noise(
    seeds: torch.Tensor,
    steps: torch.Tensor,
    token_ids: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """float64 uniforms in the open interval (0, 1), ``[B, V]``.

    Element ``[b, j]`` is a pure function of ``(seeds[b], steps[b], token_ids[..., j])``: it does
    not depend on the batch, the row's position in it, or the order of ``token_ids``.
    ``seeds``/``steps``: int64 ``[B]``; ``token_ids``: int64 ``[V]`` or ``[B, V]``. With a flat
    int64 ``workspace`` of at least ``2 * B * V`` elements the result is a view into it and nothing
    of size ``B * V`` is allocated.
    """
    rows, cols = seeds.numel(), token_ids.shape[-1]
    n = rows * cols
    if workspace is None:
        workspace = torch.empty(2 * n, dtype=torch.int64, device=seeds.device)
    bits, tmp = workspace[:n].view(rows, cols), workspace[n : 2 * n].view(rows, cols)
    row_key = mix64(mix64(seeds) + steps * _GOLDEN)
    torch.add(row_key[:, None], (token_ids + 1) * _GOLDEN, out=bits)
    _shr(_mix64_(bits, tmp), 11, tmp)
    u = bits.view(torch.float64)
    u.copy_(tmp)  # exact: tmp < 2**53
    return u.add_(0.5).mul_(2.0**-53)


@dataclass(slots=True)
class SamplingBatchInfo:
    """Per-row sampling parameters of one batch as tensors, built once per scheduler step.

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
    ) -> SamplingBatchInfo:
        """Rows whose ``seed`` is None get a fresh seed from torch's global generator."""
        assert len(params) == len(output_ids) == len(prompt_ids)
        greedy = [p.is_greedy for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]

        def floats(values: list[float], col: bool = False) -> torch.Tensor:
            t = torch.tensor(values, dtype=torch.float32, device=device)
            return t[:, None] if col else t

        top_ks = [
            1 if g else (vocab_size if p.top_k < 0 else min(p.top_k, vocab_size))
            for p, g in zip(params, greedy)
        ]
        sampled_ks = [k for k, g in zip(top_ks, greedy) if not g]
        max_top_k = max(sampled_ks, default=vocab_size)
        freq_pres = [p.frequency_penalty != 0 or p.presence_penalty != 0 for p in params]
        repetition = [p.repetition_penalty != 1.0 for p in params]
        output_counts = repetition_seen = None
        if any(freq_pres):
            rows = [o if f else [] for o, f in zip(output_ids, freq_pres)]
            output_counts = token_counts(rows, vocab_size, device)
        if any(repetition):
            rows = [p + o if r else [] for p, o, r in zip(prompt_ids, output_ids, repetition)]
            repetition_seen = token_counts(rows, vocab_size, device) > 0

        ban_rows: list[int] = []
        ban_ids: list[int] = []
        for i, (p, out) in enumerate(zip(params, output_ids)):
            # a grammar decides itself where EOS may come; banning it could leave no token
            if len(out) < p.min_new_tokens and p.regex is None and p.json_schema is None:
                banned = set(eos_token_ids) | set(p.stop_token_ids)
                ban_rows += [i] * len(banned)
                ban_ids += banned

        seeds = torch.tensor([-1 if p.seed is None else p.seed for p in params], dtype=torch.int64)
        if any(p.seed is None for p in params):
            seeds = torch.where(seeds < 0, torch.randint(0, _SEED_MAX, seeds.shape), seeds)

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

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
            greedy_rows=None
            if is_all_greedy or not any(greedy)
            else torch.tensor(greedy).to(device),
            seeds=seeds.to(device),
            steps=ints([len(o) for o in output_ids]),
            is_all_greedy=is_all_greedy,
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_top_k=any(k < vocab_size for k in sampled_ks),
            max_top_k=max_top_k,
            need_min_p=any(p.min_p > 0.0 for p in sampled),
            need_penalties=output_counts is not None or repetition_seen is not None,
            need_min_tokens=bool(ban_rows),
            max_top_logprobs=max(
                (p.top_logprobs_num for p in params if p.return_logprob), default=0
            ),
            return_logprob=any(p.return_logprob for p in params),
        )


@dataclass(slots=True)
class SampleOutput:
    """The chosen tokens; log-probs are under the raw model distribution (before temperature,
    penalties or truncation), as OpenAI reports them, and are None unless asked for."""

    next_token_ids: torch.Tensor  # int64 [B]
    logprobs: torch.Tensor | None  # float32 [B]
    top_logprobs: torch.Tensor | None  # float32 [B, k], descending
    top_logprob_ids: torch.Tensor | None  # int64 [B, k]


def apply_logit_processors(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Penalties, min-new-tokens bans and the grammar mask; returns ``logits`` untouched or a
    modified copy."""
    if info.vocab_mask is not None:
        logits = info.vocab_mask.apply(logits)  # a copy: the caller's logits stay untouched
    elif not (info.need_penalties or info.need_min_tokens):
        return logits
    else:
        logits = logits.clone()
    if info.repetition_seen is not None:
        apply_repetition_penalty(logits, info.repetition_seen, info.repetition_penalties)
    if info.output_counts is not None:
        apply_frequency_presence_penalties(
            logits, info.output_counts, info.frequency_penalties, info.presence_penalties
        )
    if info.min_tokens_rows is not None:
        logits[info.min_tokens_rows, info.min_tokens_ids] = float("-inf")
    return logits


class Sampler:
    """Samples one token per row for the whole batch.

    Invariant: a sampling row's token is a pure function of its own logits, parameters, seed and
    step; it is the same whether the row runs alone or in any batch (exponential race
    ``argmax(p / E)`` with ``E = -log u`` and ``u`` hashed from (seed, step, token id), so the
    noise a token gets does not depend on where sorting puts it). The one exception: logits tied
    exactly at a row's top-k boundary may be cut differently by a full sort and a top-k.
    Greedy rows take the argmax of the penalized logits. The caller's logits are never modified.
    """

    def __init__(self) -> None:
        self._token_ids: torch.Tensor | None = None
        self._workspace = torch.empty(0, dtype=torch.int64)

    def __call__(
        self, logits: torch.Tensor, info: SamplingBatchInfo, return_logprobs: bool
    ) -> SampleOutput:
        processed = apply_logit_processors(logits, info)
        if info.is_all_greedy:
            next_ids = processed.argmax(dim=-1)
        else:
            next_ids = self._sample(processed, info)
            if info.greedy_rows is not None:
                next_ids = torch.where(info.greedy_rows, processed.argmax(dim=-1), next_ids)
        if not return_logprobs:
            return SampleOutput(next_ids, None, None, None)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logprobs.gather(1, next_ids[:, None]).squeeze(1)
        if info.max_top_logprobs == 0:
            return SampleOutput(next_ids, chosen, None, None)
        top = logprobs.topk(info.max_top_logprobs, dim=-1)
        return SampleOutput(next_ids, chosen, top.values, top.indices)

    def _sample(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        vocab_size = logits.shape[-1]
        probs = torch.softmax(logits / info.temperatures, dim=-1)  # [B, V]
        positions = token_ids = self._vocab_ids(vocab_size, probs.device)  # [V]
        if info.need_top_k or info.need_top_p:
            if info.max_top_k < vocab_size:  # every sampling row truncates: top-k beats a sort
                probs, token_ids = probs.topk(info.max_top_k, dim=-1)  # [B, K] each, descending
            else:
                probs, token_ids = probs.sort(dim=-1, descending=True, stable=True)
            if info.need_top_k:
                probs.masked_fill_(positions[: probs.shape[-1]] >= info.top_ks[:, None], 0.0)
            if info.need_top_p:
                # top-p over the top-k renormalized; the mass strictly before a token decides,
                # so top_p == 1 keeps everything exactly.
                cum = probs.cumsum(dim=-1)
                drop = cum[:, :-1] > info.top_ps[:, None] * cum[:, -1:]
                probs[:, 1:].masked_fill_(drop, 0.0)
            max_probs = probs[:, :1]
        else:
            max_probs = probs.amax(dim=-1, keepdim=True)
        if info.need_min_p:
            probs.masked_fill_(probs < info.min_ps[:, None] * max_probs, 0.0)
        u = uniform_noise(
            info.seeds, info.steps, token_ids, self._scratch(2 * probs.numel(), probs.device)
        )
        choice = probs.div_(u.log_().neg_()).argmax(dim=-1)  # exponential race: argmax p / E
        if token_ids.dim() == 1:
            return choice
        return token_ids.gather(1, choice[:, None]).squeeze(1)

    def _vocab_ids(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        ids = self._token_ids
        if ids is None or ids.numel() != vocab_size or ids.device != device:
            ids = self._token_ids = torch.arange(vocab_size, dtype=torch.int64, device=device)
        return ids

    def _scratch(self, numel: int, device: torch.device) -> torch.Tensor:
        if self._workspace.numel() < numel or self._workspace.device != device:
            self._workspace = torch.empty(numel, dtype=torch.int64, device=device)
        return self._workspace
