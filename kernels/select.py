"""Chooses the attention implementation for a device."""

from __future__ import annotations

import torch

from plait.kernels.attention_backend import AttentionBackend
from plait.kernels.torch_backend import TorchAttentionBackend
from plait.runtime.model.model_config import ModelConfig

BACKENDS = ("auto", "torch", "triton")


def make_attention_backend(
    name: str, config: ModelConfig, device: torch.device
) -> AttentionBackend:
    """``auto`` picks Triton on CUDA and torch elsewhere; ``torch`` / ``triton`` force one."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        try:
            from plait.kernels.triton_backend import TritonAttentionBackend  # type: ignore[import-not-found]
        except ImportError as e:
            if name == "triton":
                raise ValueError("attention_backend 'triton' is not available in this build") from e
        else:
            return TritonAttentionBackend(config.num_heads, config.num_kv_heads, config.head_dim)
    return TorchAttentionBackend(config.num_heads, config.num_kv_heads, config.head_dim)
