"""Batched next-token sampling: penalties, temperature, top-k / top-p / min-p, seeded draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.runtime.worker.penalties import (
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
)
from plait.runtime.worker.sampling_info import SamplingBatchInfo


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


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: each row's argmax, the first of tied maxima (a NaN counts as the
    maximum), as ``logits.argmax(dim=-1)`` gives it. On the CPU through numpy, whose
    vectorized argmax takes a tenth of torch's over a 49k vocabulary (45 -> 5 us)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


@dataclass(slots=True)
class SampleOutput:
    """The chosen tokens; log-probs are under the raw model distribution (before temperature,
    penalties or truncation), as OpenAI reports them, and are None unless asked for."""

    next_token_ids: torch.Tensor  # int64 [B]
    logprobs: torch.Tensor | None  # float32 [B]
    top_logprobs: torch.Tensor | None  # float32 [B, k], descending
    top_logprob_ids: torch.Tensor | None  # int64 [B, k]


def takes_raw_argmax(info: SamplingBatchInfo) -> bool:
    """Whether ``Sampler`` takes every row's token as the argmax of its raw logits: all rows
    greedy and no processor of ``apply_logit_processors`` set (a grammar's mask, known only
    at sampling, is the caller's to rule out; so are log-probs). Such a batch's forward may
    leave every logit but each row's maximum candidates at -inf (``ModelRunner.forward``'s
    ``argmax_only``). A processor added below must be added here."""
    return info.is_all_greedy and (
        info.vocab_mask is None
        and info.repetition_seen is None
        and info.output_counts is None
        and info.bias_rows is None
        and info.min_tokens_rows is None
    )


def apply_logit_processors(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Penalties, logit bias, min-new-tokens bans and the grammar mask; returns ``logits``
    untouched or a modified copy. A token the grammar or a ban excludes stays excluded whatever
    its bias (-inf + bias is -inf)."""
    if info.vocab_mask is not None:
        logits = info.vocab_mask.apply(logits)  # a copy: the caller's logits stay untouched
    elif not (info.need_penalties or info.need_min_tokens or info.bias_rows is not None):
        return logits
    else:
        logits = logits.clone()
    if info.repetition_seen is not None:
        apply_repetition_penalty(logits, info.repetition_seen, info.repetition_penalties)
    if info.output_counts is not None:
        apply_frequency_presence_penalties(
            logits, info.output_counts, info.frequency_penalties, info.presence_penalties
        )
    if info.bias_rows is not None:
        bias = info.bias_values.to(logits.dtype)
        logits.index_put_((info.bias_rows, info.bias_ids), bias, accumulate=True)
    if info.min_tokens_rows is not None:
        logits[info.min_tokens_rows, info.min_tokens_ids] = float("-inf")
    return logits


class Sampler:
    """Samples one token per row for the whole batch.

    Invariant: a sampling row's token is a pure function of its own logits, parameters, seed and
    step; it is the same whether the row runs alone or in any batch (exponential race
    ``argmax(p / E)`` with ``E = -log u`` and ``u`` hashed from (seed, step, token id), so the
    noise a token gets does not depend on where sorting puts it). The one exception: logits tied
    exactly at a row's top-k boundary (or at the top-p candidates' boundary) may be cut differently by a full sort and a top-k.
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
            next_ids = argmax_rows(processed)
        else:
            next_ids = self._sample(processed, info)
            if info.greedy_rows is not None:
                next_ids = torch.where(info.greedy_rows, argmax_rows(processed), next_ids)
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
            mass = None  # [B, 1] a row's whole mass, when ``probs`` holds only part of it
            if info.max_top_k < vocab_size:  # every sampling row truncates: top-k beats a sort
                probs, token_ids = probs.topk(info.max_top_k, dim=-1)  # [B, K] each, descending
            else:
                nucleus = _nucleus_candidates(probs, info)
                if nucleus is not None:
                    probs, token_ids, mass = nucleus
                else:
                    probs, token_ids = probs.sort(dim=-1, descending=True, stable=True)
            if info.need_top_k:
                probs.masked_fill_(positions[: probs.shape[-1]] >= info.top_ks[:, None], 0.0)
            if info.need_top_p:
                # top-p over the top-k renormalized; the mass strictly before a token decides,
                # so top_p == 1 keeps everything exactly.
                cum = probs.cumsum(dim=-1)
                total = cum[:, -1:] if mass is None else mass
                drop = cum[:, :-1] > info.top_ps[:, None] * total
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


# Top-p first looks for its nucleus among this many of a row's most likely tokens.
NUCLEUS_CANDIDATES = 256
# The candidates must hold this much more than top_p of the mass, so float rounding cannot make
# the full sort keep a token beyond them.
_NUCLEUS_MARGIN = 1e-4


def _nucleus_candidates(
    probs: torch.Tensor, info: SamplingBatchInfo
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Top-p without top-k, without sorting the vocabulary: the top ``NUCLEUS_CANDIDATES``
    tokens of each row (descending, their ids and the row's whole mass) when they already hold
    more than top_p of every sampling row's mass. Then top-p drops every token after them, so
    sampling among them is what a full sort gives (a sort over ``[B, V]`` costs ~20x a top-k
    here). None, to sort, when some sampling row's nucleus may be larger (top_p near 1, a flat
    distribution). Greedy rows do not count: the sampler answers them by argmax."""
    k = NUCLEUS_CANDIDATES
    if info.need_top_k or k >= probs.shape[-1]:
        return None
    values, ids = probs.topk(k, dim=-1)  # [B, k] each, descending
    mass = probs.sum(dim=-1, keepdim=True)  # [B, 1]
    covered = values.sum(dim=-1, keepdim=True) > (info.top_ps[:, None] + _NUCLEUS_MARGIN) * mass
    if info.greedy_rows is not None:
        covered |= info.greedy_rows[:, None]
    if not bool(covered.all()):
        return None
    return values, ids, mass
