"""Weight-only quantized linear layers on torch's own CPU kernels (int8 per channel, int4 per group).

Decode streams every weight once per step, so fewer weight bytes is a faster step: int8 halves
bfloat16's bytes, int4 quarters them. The kernels are ``aten._weight_int8pack_mm`` and
``aten._weight_int4pack_mm_for_cpu``; both are vectorized for bfloat16 activations only (a float32
activation takes a scalar path ~10x slower, bench/RESULTS.md), so the activation is cast to
bfloat16 around the product and the result back to the caller's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATIONS = ("int8", "int4")
# Above this many rows a forward multiplies by a bfloat16 copy of the dequantized weight instead:
# torch's weight-only kernels are matrix-vector kernels, 2-4x slower than the bfloat16 GEMM at
# 32-256 rows (bench/RESULTS.md, issue 15), while a decode step of a few rows is bound by the
# weight bytes it streams, where the quantized kernels win. The copy costs bfloat16's memory
# again; the speed of decode is what quantization buys here, not the memory.
DENSE_ABOVE_ROWS = 8
# The group size of int4: 32 is GGUF's Q4_0 / Q4_1 / Q4_K sub-block, so those load exactly.
INT4_GROUP = 32
_COMPUTE = torch.bfloat16


class Int8Linear(nn.Module):
    """``y = x (q * scale)ᵀ`` with ``q`` int8 [out, in] and one float scale per output row."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scale.shape != qweight.shape[:1]:
            raise ValueError("Int8Linear needs an int8 [out, in] weight and an [out] scale")
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(_COMPUTE).contiguous())
        self.register_buffer("dense", self.dequantized().to(_COMPUTE))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        """Symmetric per-row quantization of a dense [out, in] weight (round to nearest)."""
        w = weight.float()
        # round against the scale as the kernel will hold it (bfloat16)
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(_COMPUTE).float()
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q, scale)

    def dequantized(self) -> torch.Tensor:
        """The float32 [out, in] weight this layer multiplies by (for checks)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(_COMPUTE)
        if x2.shape[0] > DENSE_ABOVE_ROWS:
            y = F.linear(x2, self.dense)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """``y = x Wᵀ`` with ``W[n, k] = scale[n, g] * code[n, k] + low[n, g]``, ``g = k // 32``.

    ``code`` is 0..15. That is GGUF Q4_1 exactly (``low`` = its ``m``), Q4_0 with
    ``low = -8 * scale``, and each 32-element sub-block of Q4_K. torch's kernel stores
    ``(code - 8) * scale + zero``, so ``zero = low + 8 * scale``. Scales and zeros are held in
    bfloat16, the kernel's activation dtype (a relative rounding of 2^-9 per group).
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> None:
        super().__init__()
        out_features, in_features = codes.shape
        groups = in_features // INT4_GROUP
        if in_features % INT4_GROUP or scale.shape != (out_features, groups):
            raise ValueError(
                f"Int4Linear needs in_features divisible by {INT4_GROUP} and [out, in/{INT4_GROUP}] "
                f"scales; got codes {tuple(codes.shape)}, scales {tuple(scale.shape)}"
            )
        self.in_features, self.out_features = in_features, out_features
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.to(torch.int32).contiguous(), 1
        )
        zero = low.float() + 8.0 * scale.float()
        scales_zeros = torch.stack([scale.float().t(), zero.t()], dim=-1)  # [in/32, out, 2]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros.to(_COMPUTE).contiguous())
        sz = self.scales_zeros.float()  # the values the kernel uses: [in/32, out, 2]
        dense = (codes.float() - 8.0).view(out_features, groups, INT4_GROUP)
        dense = dense * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]
        self.register_buffer("dense", dense.view(out_features, in_features).to(_COMPUTE))
        # the fused CPU decode step's copy (kernels/cpu_decode.c, DT_I4): codes two to a byte,
        # 16 bytes per group (byte j: element j low, element 16 + j high), float32 scale / low
        g = codes.to(torch.uint8).view(out_features, groups, 2, INT4_GROUP // 2)
        nibbles = (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(out_features, in_features // 2)
        self.register_buffer("nibbles", nibbles.contiguous())
        self.register_buffer("group_scale", scale.float().contiguous())
        self.register_buffer("group_low", low.float().contiguous())

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int4Linear:
        """Asymmetric min/max quantization per 32-element group of a dense [out, in] weight."""
        out_features, in_features = weight.shape
        w = weight.float().reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / 15.0).clamp_min(1e-12)
        codes = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15)
        return cls(codes.reshape(out_features, in_features).to(torch.uint8), scale, low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(_COMPUTE).contiguous()
        if x2.shape[0] > DENSE_ABOVE_ROWS:
            y = F.linear(x2, self.dense)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.packed, INT4_GROUP, self.scales_zeros
            )
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
