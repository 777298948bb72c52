"""A linear layer that stores its weight in the layout torch's CPU matmul streams fastest."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A bfloat16 forward of at most this many rows takes ATen's own matrix-vector kernel (oneDNN
# off): 1.3-1.8x faster than oneDNN's at 1-2 rows, several times slower from 4 rows up
# (bench/RESULTS.md, issue 15). Its sums are ordered differently: outputs move by bfloat16 ulps.
BF16_GEMV_MAX_ROWS = 2


class Linear(nn.Module):
    """``y = x Wᵀ (+ bias)`` for a checkpoint weight W of shape ``[out_features, in_features]``.

    Decode is a matrix-vector product bound by streaming every weight once per step. Measured
    on CPU (bench/RESULTS.md), a float32 wide matrix (out >= in: q/k/v, gate/up, the LM head)
    streams about twice as fast stored transposed, ``[in, out]``, and multiplied as
    ``x @ weight``; a tall one (the MLP's down projection) is faster in the usual ``[out, in]``
    with ``F.linear``. Other dtypes keep ``[out, in]``: bfloat16's fast decode kernel needs it
    and its GEMM is as fast either way. ``transposed`` says which layout ``weight`` holds; the
    loader writes checkpoints into it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.transposed = dtype == torch.float32 and out_features >= in_features
        shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            y = x @ self.weight
            return y if self.bias is None else y + self.bias
        if (
            x.dtype == torch.bfloat16
            and x.numel() <= BF16_GEMV_MAX_ROWS * x.shape[-1]
            and x.device.type == "cpu"
        ):
            torch.backends.mkldnn.enabled = False
            try:
                return F.linear(x, self.weight, self.bias)
            finally:
                torch.backends.mkldnn.enabled = True
        return F.linear(x, self.weight, self.bias)
