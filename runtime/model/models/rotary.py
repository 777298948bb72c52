"""Rotary position embeddings (RoPE) with Llama-3 and linear scaling, as a cos/sin cache."""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2], float32, as Hugging Face computes them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")


class RotaryEmbedding(torch.nn.Module):
    """The cos/sin table of RoPE in the non-interleaved (rotate-half) layout of Hugging Face Llama.

    ``sin`` holds the sine with its first half negated: rotate-half's sign, moved from the
    activations to the table, so a rotation is a swap of halves and two products (see
    ``apply_rotary``), with the same bits as Hugging Face's ``x * cos + rotate_half(x) * sin``.
    """

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta, self.scaling = (
            head_dim,
            max_positions,
            theta,
            scaling,
        )
        self.register_buffer(
            "cos", torch.empty(max_positions, head_dim, dtype=dtype), persistent=False
        )
        self.register_buffer(
            "sin", torch.empty(max_positions, head_dim, dtype=dtype), persistent=False
        )
        if self.cos.device.type != "meta":
            self.build()

    def build(self) -> None:
        """(Re)computes the cos/sin cache in place, e.g. after ``to_empty`` from the meta device."""
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        freqs = torch.outer(torch.arange(self.max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1).to(self.cos.device)  # [P, D]
        sin = emb.sin()
        sin[:, : self.head_dim // 2].neg_()
        self.cos = emb.cos().to(self.cos.dtype)
        self.sin = sin.to(self.sin.dtype)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [N, 1, D] for the batch's positions (shared by every layer)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x`` [N, H, D] (any heads: q and k together) by cos / signed sin [N, 1, D]."""
    n, h, d = x.shape
    swapped = x.reshape(n, h, 2, d // 2).flip(2).view(n, h, d)  # [x2, x1]
    # [x2, x1] * [-s, s] == [-x2, x1] * [s, s] exactly: a sign flip rounds nothing
    return x * cos + swapped * sin
