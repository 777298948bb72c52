"""A linear layer as the fused step's C products read it (``kernels/cpu_decode.c``'s DT_*
formats): float32 / bfloat16 weights as they are, int8 / int4 codes repacked for the packed
kernels where the library has them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.kernels import cpu_decode
from plait.runtime.model.models.quant_linear import Int4Linear, Int8Linear

DTYPES = {torch.float32: cpu_decode.DT_F32, torch.bfloat16: cpu_decode.DT_BF16}


@dataclass(slots=True)
class ProductWeights:
    """A linear layer as the C products read it: ``dtype`` (``cpu_decode.DT_*``) and
    ``tensors`` = (weight, scales, lows), None where the format has none; ``sources`` are the
    layer's own tensors they were made from (the same objects where nothing was repacked)."""

    dtype: int
    tensors: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
    sources: list[torch.Tensor]


def _exact_in_half(t: torch.Tensor) -> bool:
    return bool(torch.equal(t.to(torch.float16).to(t.dtype), t))


def product_weights(
    lin: torch.nn.Module, packed: bool, half_scales: bool = True, amx_tiles: bool = False
) -> ProductWeights:
    """``lin`` in the fused step's format: float32 weights as they are; bfloat16 ones as AMX's
    tiles (``DT_BF16T``, a copy) where ``amx_tiles`` (the library's AMX is granted) and ``in``
    is a multiple of 32, else as they are; int8 and int4 codes repacked (``packed``: the library
    has the packed kernels, AVX512_VNNI or AVX2; rows in sixteens; their scales (and int4's
    lows) in float16 when ``half_scales`` and every one is a float16 value), else as they
    are."""
    packed = packed and getattr(lin, "out_features", 1) % 16 == 0
    if isinstance(lin, Int8Linear):
        sources = [lin.qweight, lin.scale]
        if packed:  # float16 scales where that is exact (GGUF Q8_0, from_float)
            half = half_scales and _exact_in_half(lin.scale)
            codes, scales = cpu_decode.pack_i8_vnni(lin.qweight, lin.scale, half)
            code = cpu_decode.DT_I8PH if half else cpu_decode.DT_I8P
            return ProductWeights(code, (codes, scales, None), sources)
        return ProductWeights(cpu_decode.DT_I8, (lin.qweight, lin.scale, None), sources)
    if isinstance(lin, Int4Linear):
        held = (lin.nibbles, lin.group_scale, lin.group_low)
        if packed:  # float16 scales and lows where that is exact (GGUF Q4_0 / Q4_1, from_float)
            half = half_scales and _exact_in_half(lin.group_scale) and _exact_in_half(lin.group_low)
            tensors = cpu_decode.pack_i4_vnni(lin.codes(), lin.group_scale, lin.group_low, half)
            return ProductWeights(
                cpu_decode.DT_I4PH if half else cpu_decode.DT_I4P, tensors, list(held)
            )
        return ProductWeights(cpu_decode.DT_I4, held, list(held))
    w = lin.weight
    if amx_tiles and w.dtype == torch.bfloat16 and w.shape[1] % 32 == 0 and w.shape[0] >= 16:
        return ProductWeights(cpu_decode.DT_BF16T, (cpu_decode.tile_bf16_amx(w), None, None), [w])
    return ProductWeights(DTYPES[w.dtype], (w, None, None), [w])
