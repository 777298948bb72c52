"""A linear layer that stores its weight in the layout torch's CPU matmul streams fastest."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plait.runtime.model.models import bf16_products, blas

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

    ``use_openblas(True)`` sends a float32 CPU weight's products through OpenBLAS (``blas``),
    with the same layouts; the caller sets the threads (``ModelRunner``).
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
        self.openblas = False
        self._numpy: tuple[int, np.ndarray] | None = None  # (data_ptr, the weight's numpy view)

    def set_layout(self, transposed: bool) -> None:
        """Re-lays the float32 weight out as ``[in, out]`` (True) or ``[out, in]`` (False)."""
        if transposed == self.transposed:
            return
        if transposed and self.weight.dtype != torch.float32:
            raise ValueError("only a float32 weight is kept as [in, out]")
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.detach().t().contiguous())
        self.transposed = transposed

    def use_openblas(self, on: bool) -> None:
        self.openblas = (
            on and self.weight.dtype == torch.float32 and self.weight.device.type == "cpu"
        )

    def _numpy_weight(self) -> np.ndarray:
        ptr = self.weight.data_ptr()
        if self._numpy is None or self._numpy[0] != ptr:  # a new tensor was loaded in
            self._numpy = (ptr, self.weight.detach().numpy())
        return self._numpy[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.openblas and x.dtype == torch.float32:
            y = blas.matmul(x, self._numpy_weight(), self.transposed)
            return y if self.bias is None else y + self.bias
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
        if x.dtype == torch.bfloat16 and self.weight.dtype == torch.bfloat16:
            return bf16_products.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
