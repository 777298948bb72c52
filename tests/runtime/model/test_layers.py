"""The decoder's building blocks: the fast forms compute what the reference formulas compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plait.runtime.model.models.linear import BF16_GEMV_MAX_ROWS, Linear
from plait.runtime.model.models.llama import RMSNorm
from plait.runtime.model.models.rotary import RotaryEmbedding, apply_rotary


def _rotate_half(x: torch.Tensor) -> torch.Tensor:  # Hugging Face Llama's
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_has_the_bits_of_hugging_face_rotate_half(dtype):
    rope = RotaryEmbedding(64, 128, 10000.0, None, dtype)
    positions = torch.tensor([0, 5, 77])
    cos, signed_sin = rope.lookup(positions)
    freqs = torch.outer(positions.float(), 1.0 / 10000.0 ** (torch.arange(0, 64, 2) / 64))
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin().to(dtype)[:, None]
    assert torch.equal(cos, emb.cos().to(dtype)[:, None])
    qkv = torch.randn(3, 9 + 3 + 3, 64).to(dtype)
    qk = qkv[:, :12]  # q's and k's heads, a strided view as the model passes them
    assert torch.equal(apply_rotary(qk, cos, signed_sin), qk * cos + _rotate_half(qk) * sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_has_the_bits_of_torch_rms_norm(dtype):
    norm = RMSNorm(576, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) + 0.5)
    norm = norm.to(dtype)
    x = (3 * torch.randn(4, 576)).to(dtype)
    with torch.inference_mode():
        expected = F.rms_norm(x, (576,), norm.weight, 1e-5)
        assert torch.equal(norm(x), expected)


@pytest.mark.parametrize("rows", [1, BF16_GEMV_MAX_ROWS, BF16_GEMV_MAX_ROWS + 1, 16])
def test_bfloat16_linear_matches_float32_and_leaves_onednn_on(rows):
    layer = Linear(96, 160, bias=True, dtype=torch.bfloat16)
    assert not layer.transposed  # [out, in]: what the small-row kernel reads
    with torch.no_grad():
        layer.weight.copy_(torch.randn(160, 96))
        layer.bias.copy_(torch.randn(160))
    layer = layer.to(torch.bfloat16)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    with torch.inference_mode():
        y = layer(x)
    expected = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    assert torch.backends.mkldnn.enabled


def test_float32_wide_linear_is_stored_transposed():
    assert Linear(64, 256).transposed and not Linear(256, 64).transposed
