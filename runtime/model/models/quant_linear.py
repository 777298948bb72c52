"""Weight-only quantized linear layers on the CPU: int8 and int4 per 32-element block.

Decode streams every weight once per step, so fewer weight bytes is a faster step: int8 halves
bfloat16's bytes, int4 quarters them. Both formats are GGUF's own (int8: Q8_0, one scale per
32 elements; int4: Q4_0 / Q4_1 / Q4_K sub-blocks), so a GGUF's blocks load as stored. Decode
steps run in the fused C step (``kernels/cpu_decode.c``), which reads the codes (by integer dot
products, AVX512_VNNI or AVX2, against activations quantized to 16 / 14 bits per 32-element
block where the CPU has either; else widened in registers). torch has a kernel for int4's groups
(``aten._weight_int4pack_mm_for_cpu``, vectorized for bfloat16 activations only, so the
activation is cast around the product) but none for int8 blocks (its ``_weight_int8pack_mm``
takes one scale per row, which cost greedy agreement with float32: 54.7%, bench/RESULTS.md),
so int8 outside the fused step multiplies by its bfloat16 copy.
"""

from __future__ import annotations

import torch
from torch import nn

from plait.runtime.model.models import bf16_products

QUANTIZATIONS = ("int8", "int4")
# Above this many rows an int4 forward in torch multiplies by a bfloat16 copy of the dequantized
# weight instead: torch's int4 kernel is a matrix-vector kernel, 2-4x slower than the GEMM at
# 32-256 rows (bench/RESULTS.md, issue 15), while a decode step of a few rows is bound by the
# weight bytes it streams, where the quantized kernels win. The copy costs bfloat16's memory
# again; the speed of decode is what quantization buys here, not the memory.
DENSE_ABOVE_ROWS = 8
# The block (group) size of int8 and int4: GGUF's Q8_0 block and Q4_0 / Q4_1 / Q4_K sub-block.
INT4_GROUP = 32
INT8_BLOCK = 32
_COMPUTE = torch.bfloat16


class Int8Linear(nn.Module):
    """``y = x Wᵀ`` with ``W[n, k] = bf16(q[n, k] * scale[n, k // 32])``: ``q`` int8,
    ``scale`` float32 ``[out, in / 32]`` (GGUF Q8_0's ``d``), the product taken in float32 and
    rounded to bfloat16 (nearest even): ``dense`` holds it, for torch's path. The fused C step
    reads ``qweight`` and ``scale``: by AVX512_VNNI it multiplies ``q * scale`` exactly (against
    activations held as int16 per block), else it makes ``dense``'s values in registers.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        rows, cols = qweight.shape if qweight.dim() == 2 else (0, 0)
        if (
            qweight.dtype != torch.int8
            or qweight.dim() != 2
            or cols % INT8_BLOCK
            or scale.shape != (rows, cols // INT8_BLOCK)
        ):
            raise ValueError(
                f"Int8Linear needs an int8 [out, in] weight with in divisible by {INT8_BLOCK} and "
                f"[out, in/{INT8_BLOCK}] scales; got {qweight.dtype} {tuple(qweight.shape)}, "
                f"scales {tuple(scale.shape)}"
            )
        self.in_features, self.out_features = cols, rows
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("dense", self.dequantized().to(_COMPUTE))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Linear:
        """GGUF Q8_0 quantization of a dense [out, in] weight, as llama.cpp's
        ``quantize_row_q8_0_ref``: per block ``d = amax / 127``, ``q = round(w / d)`` (half away
        from zero), and ``d`` stored as float16."""
        if weight.shape[1] % INT8_BLOCK:
            raise ValueError(f"Int8Linear needs in_features divisible by {INT8_BLOCK}")
        return cls(*quantize_q8_0(weight))

    def dequantized(self) -> torch.Tensor:
        """The float32 [out, in] weight ``q * scale`` (before ``dense``'s bfloat16 rounding)."""
        q = self.qweight.float().view(self.out_features, -1, INT8_BLOCK)
        return (q * self.scale[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = bf16_products.linear(x.reshape(-1, self.in_features).to(_COMPUTE), self.dense)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q8_0 codes (int8 ``[out, in]``) and scales (float16 values in float32,
    ``[out, in / 32]``) of a dense weight, as llama.cpp's ``quantize_row_q8_0_ref``: per block
    ``d = amax / 127``, ``q = round(w / d)`` (half away from zero). ``in`` a multiple of 32."""
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, in_features // INT8_BLOCK, INT8_BLOCK)
    d = w.abs().amax(dim=-1) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    x = (w * inv[..., None]).abs()
    whole = torch.floor(x)  # roundf: half away from zero (floor(x + 0.5) rounds 0.49999997 up)
    q = (torch.sign(w) * (whole + torch.floor(2 * (x - whole)))).to(torch.int8)
    return q.reshape(out_features, in_features), d.half().float()


def _as_half_values(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to float16 values (held in float32), or ``t`` itself if one overflows."""
    rounded = t.to(torch.float16).float()
    return rounded if bool(torch.isfinite(rounded).all()) else t


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
        """Asymmetric min/max quantization per 32-element group of a dense [out, in] weight, as
        GGUF Q4_1: codes from the float32 scale and low, which are then stored as float16
        values (kept in float32 where one would overflow float16)."""
        out_features, in_features = weight.shape
        w = weight.float().reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / 15.0).clamp_min(1e-12)
        codes = torch.round((w - low[..., None]) / scale[..., None]).clamp_(0, 15)
        codes = codes.reshape(out_features, in_features).to(torch.uint8)
        return cls(codes, _as_half_values(scale), _as_half_values(low))

    def codes(self) -> torch.Tensor:
        """The [out, in] codes (0..15, uint8), unpacked from ``nibbles``."""
        g = self.nibbles.view(self.out_features, -1, INT4_GROUP // 2)
        return torch.stack([g & 15, g >> 4], dim=2).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(_COMPUTE).contiguous()
        if x2.shape[0] > DENSE_ABOVE_ROWS:
            y = bf16_products.linear(x2, self.dense)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.packed, INT4_GROUP, self.scales_zeros
            )
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
