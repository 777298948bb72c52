"""Logit penalties over the tokens a request has already seen, batched over rows."""

from __future__ import annotations

import torch


def token_counts(ids: list[list[int]], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """How often each token id occurs in each row: float32 ``[B, V]``.

    One ``scatter_add_`` over the rows padded with the id ``vocab_size``; the padding lands in an
    extra column that is sliced off, so rows of any length (empty included) cost one kernel.
    """
    width = max((len(row) for row in ids), default=0)
    padded = torch.tensor(
        [row + [vocab_size] * (width - len(row)) for row in ids], dtype=torch.int64, device=device
    ).view(len(ids), width)
    counts = torch.zeros(len(ids), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, padded, torch.ones(padded.shape, dtype=torch.float32, device=device))
    return counts[:, :vocab_size]


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
