"""Logit penalties over the tokens a request has already seen, batched over rows."""

from __future__ import annotations

from itertools import chain

import torch


def token_counts(ids: list[list[int]], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """How often each token id occurs in each row: float32 ``[B, V]``.

    One ``index_add_`` over the rows' ids laid end to end, so rows of any length (empty
    included) cost one kernel and no padding. For a request's history once, when it joins a
    batch; from then on ``count_new_tokens_`` adds one token per step.
    """
    rows, vocab = len(ids), vocab_size
    lens = torch.tensor([len(row) for row in ids], dtype=torch.int64)
    flat = torch.tensor(list(chain.from_iterable(ids)), dtype=torch.int64)  # [sum(lens)]
    flat += torch.repeat_interleave(torch.arange(rows, dtype=torch.int64) * vocab, lens)
    counts = torch.zeros(rows * vocab, dtype=torch.float32, device=device)
    flat = flat.to(device)
    counts.index_add_(0, flat, torch.ones(flat.shape, dtype=torch.float32, device=device))
    return counts.view(rows, vocab)


def count_new_tokens_(counts: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor) -> None:
    """In place: ``counts[b, token_ids[b]] += rows[b]``, one token per row. ``counts`` float32
    ``[B, V]``, ``token_ids`` int64 ``[B]``, ``rows`` float32 ``[B, 1]`` (1 where the row
    counts its tokens, 0 where its counts stay as they are)."""
    counts.scatter_add_(1, token_ids[:, None], rows)


def mark_new_tokens_(seen: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor) -> None:
    """In place: ``seen[b, token_ids[b]] |= rows[b]``. ``seen`` bool ``[B, V]``, ``token_ids``
    int64 ``[B]``, ``rows`` bool ``[B, 1]``."""
    index = token_ids[:, None]  # [B, 1]
    seen.scatter_(1, index, seen.gather(1, index) | rows)


def apply_frequency_presence_penalties(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> None:
    """OpenAI semantics, in place: ``logit -= frequency * count + presence * (count > 0)``.

    ``output_counts`` ``[B, V]`` counts the request's output tokens only (not the prompt);
    ``frequency`` and ``presence`` are ``[B, 1]``.
    """
    logits.sub_(output_counts * frequency)
    logits.sub_((output_counts > 0).to(logits.dtype) * presence)


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> None:
    """HF semantics, in place: on tokens ``seen`` (bool ``[B, V]``, prompt and output), positive
    logits are divided by ``penalty`` ``[B, 1]`` and negative ones multiplied by it."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    logits.copy_(torch.where(seen, penalized, logits))
