"""Weight-only int8 / int4 linear layers and the GGUF blocks they load (no real model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from plait.runtime.model.gguf_quant import _q4_01, _q4_k, _q8_0
from plait.runtime.model.models.quant_linear import INT4_GROUP, INT8_BLOCK, Int4Linear, Int8Linear


def _bf16_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What the kernels compute: bfloat16 activations times the float weight, in float32."""
    return x.to(torch.bfloat16).float() @ w.t()


@pytest.mark.parametrize("rows", [5, 40])
def test_int8_linear_is_the_dequantized_weight_matmul(rows):
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    layer = Int8Linear.from_float(w)
    deq = layer.dequantized()
    step = layer.scale.repeat_interleave(INT8_BLOCK, dim=1)  # one scale per 32 elements
    assert layer.scale.shape == (96, 64 // INT8_BLOCK)
    # round to nearest: half a step, plus the scale's rounding to float16 (2^-11 of itself)
    # times a code of up to 127
    assert ((deq - w).abs() <= step * (0.5 + 127 * 2**-11)).all()
    assert torch.equal(layer.dense, deq.to(torch.bfloat16))  # W = bf16(q * scale)
    x = torch.randn(rows, 64)
    y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (rows, 96)
    ref = _bf16_matmul(x, layer.dense.float())
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=1e-2 * float(ref.abs().max()))


def test_int8_from_float_is_gguf_q8_0():
    """``from_float`` makes llama.cpp's Q8_0 blocks (gguf-py's reference quantizer), and
    ``_q8_0`` reads those blocks back as the same codes and scales."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 4 * INT8_BLOCK)).astype(np.float32)
    w[0, :INT8_BLOCK] = 0.0  # an all-zero block: scale 0, codes 0
    w[1, 5] = 40.0  # an outlier only moves its own block's scale
    blocks = np.asarray(quantize(w, GGMLQuantizationType.Q8_0))
    codes, scale = _q8_0(blocks.reshape(24, -1))
    layer = Int8Linear.from_float(torch.from_numpy(w))
    assert torch.equal(layer.qweight, torch.from_numpy(codes))
    assert torch.equal(layer.scale, torch.from_numpy(scale))
    ref = dequantize(blocks, GGMLQuantizationType.Q8_0).reshape(24, -1)
    assert torch.equal(layer.dequantized(), torch.from_numpy(np.asarray(ref, dtype=np.float32)))


def test_int8_linear_needs_whole_blocks():
    with pytest.raises(ValueError, match="divisible by 32"):
        Int8Linear.from_float(torch.randn(4, 40))
    with pytest.raises(ValueError, match="in/32"):
        Int8Linear(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4))


@pytest.mark.parametrize("rows", [3, 20])  # the int4 kernel, then the bfloat16 copy above 8 rows
def test_int4_linear_equals_scale_code_plus_low(rows):
    torch.manual_seed(0)
    out_f, in_f = 48, 4 * INT4_GROUP
    codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.uint8)
    scale = torch.rand(out_f, in_f // INT4_GROUP) * 0.1 + 0.01
    low = -torch.rand(out_f, in_f // INT4_GROUP)
    layer = Int4Linear(codes, scale, low)
    # the kernel holds scale and zero (= low + 8 scale) in bfloat16
    s = scale.to(torch.bfloat16).float()
    z = (low + 8 * scale).to(torch.bfloat16).float()
    w = (codes.float() - 8).view(out_f, -1, INT4_GROUP) * s[..., None] + z[..., None]
    x = torch.randn(2, rows, in_f)
    y = layer(x)
    assert y.shape == (2, rows, out_f)
    ref = _bf16_matmul(x, w.view(out_f, in_f))
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=1e-2 * float(ref.abs().max()))
    yb = layer(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16


def test_int4_from_float_is_within_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(32, 2 * INT4_GROUP)
    layer = Int4Linear.from_float(w)
    x = torch.eye(2 * INT4_GROUP)
    deq = layer(x).float().t()  # column k of the identity picks weight column k
    step = (w.view(32, -1, INT4_GROUP).amax(-1) - w.view(32, -1, INT4_GROUP).amin(-1)) / 15
    err = (deq - w).abs().view(32, -1, INT4_GROUP).amax(-1)
    assert (err <= step / 2 + 0.02 * w.abs().max()).all()  # plus bfloat16 rounding


def test_int4_rejects_a_width_not_divisible_by_the_group():
    with pytest.raises(ValueError, match="divisible"):
        Int4Linear(torch.zeros(4, 40, dtype=torch.uint8), torch.ones(4, 1), torch.zeros(4, 1))


def _groups_to_dense(codes, scale, low):
    rows = codes.shape[0]
    return (
        codes.astype(np.float32).reshape(rows, -1, INT4_GROUP) * scale[..., None] + low[..., None]
    ).reshape(rows, -1)


@pytest.mark.parametrize("kind", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_gguf_q4_0_and_q4_1_blocks_decode_exactly(kind):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 128)).astype(np.float32)
    blocks = quantize(w, kind)  # [rows, bytes] as a GGUF stores them
    codes, scale, low = _q4_01(blocks, kind == GGMLQuantizationType.Q4_1)
    assert codes.max() <= 15
    np.testing.assert_array_equal(_groups_to_dense(codes, scale, low), dequantize(blocks, kind))


def test_gguf_q4_k_blocks_decode_exactly():
    rng = np.random.default_rng(0)
    rows = 3
    blocks = rng.integers(0, 256, (rows * 2, 144), dtype=np.uint8)  # two super-blocks per row
    halves = rng.uniform(0.001, 0.1, (rows * 2, 2)).astype(np.float16)
    blocks[:, 0:4] = halves.view(np.uint8).reshape(rows * 2, 4)  # finite d and dmin
    blocks = blocks.reshape(rows, 2 * 144)
    codes, scale, low = _q4_k(blocks)
    expected = dequantize(blocks, GGMLQuantizationType.Q4_K)
    np.testing.assert_allclose(_groups_to_dense(codes, scale, low), expected, rtol=1e-6, atol=1e-7)
