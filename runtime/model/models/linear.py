"""A linear layer that stores its weight in the layout torch's CPU matmul streams fastest."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """``y = x Wᵀ (+ bias)`` for a checkpoint weight W of shape ``[out_features, in_features]``.

    Decode is a matrix-vector product bound by streaming every weight once per step. Measured
    on CPU (bench/RESULTS.md), a wide matrix (out >= in: q/k/v, gate/up, the LM head) streams
    about twice as fast stored transposed, ``[in, out]``, and multiplied as ``x @ weight``; a
    tall one (the MLP's down projection) is faster in the usual ``[out, in]`` with ``F.linear``.
    ``transposed`` says which layout ``weight`` holds; the loader writes checkpoints into it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.transposed = out_features >= in_features
        shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transposed:
            return F.linear(x, self.weight, self.bias)
        y = x @ self.weight
        return y if self.bias is None else y + self.bias
