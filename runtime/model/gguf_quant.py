"""Reads a GGUF's quantized linear weights as they are stored, for the quantized linear layers.

Q8_0 (``d * q`` per 32 elements, ``d`` float16) is ``Int8Linear``'s own format. The 4-bit
block formats map onto ``Int4Linear``'s ``scale * code + low`` per 32 elements without
any loss: Q4_0 (``d * (q - 8)``), Q4_1 (``d * q + m``) and Q4_K (per 32-element sub-block
``d * sc * q - dmin * mn``). Any other type is dequantized in memory (never to disk) and quantized
by the layer's own ``from_float``. Rows are returned in Hugging Face order (llama.cpp's rope row
permutation of q / k undone), so they fuse like the dense checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import Q4_K, dequantize

from plait.runtime.model.gguf_convert import (
    ROPE_PERMUTED_ARCHITECTURES,
    _field,
    _hf_name,
    _reverse_rope_permute,
)

_FOUR_BIT = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_K)


@dataclass(slots=True)
class Int8Blocks:
    """``W[n, k] = scale[n, k // 32] * codes[n, k]`` (GGUF Q8_0)."""

    codes: torch.Tensor  # [out, in] int8
    scale: torch.Tensor  # [out, in / 32] float32


@dataclass(slots=True)
class Int4Groups:
    """``W[n, k] = scale[n, k // 32] * codes[n, k] + low[n, k // 32]``, codes 0..15."""

    codes: torch.Tensor  # [out, in] uint8
    scale: torch.Tensor  # [out, in / 32] float32
    low: torch.Tensor  # [out, in / 32] float32


class GGUFWeights:
    """The linear weights of a llama-family GGUF, by Hugging Face parameter name."""

    def __init__(self, path: str | Path) -> None:
        self.reader = GGUFReader(path)
        arch = _field(self.reader, "general.architecture")
        self.permuted = arch in ROPE_PERMUTED_ARCHITECTURES
        self.heads = int(_field(self.reader, f"{arch}.attention.head_count"))
        self.kv_heads = int(_field(self.reader, f"{arch}.attention.head_count_kv", self.heads))
        self.tensors = {
            _hf_name(t.name): t for t in self.reader.tensors if t.name != "rope_freqs.weight"
        }

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def is_four_bit(self, name: str) -> bool:
        return self.tensors[name].tensor_type in _FOUR_BIT

    def is_q8_0(self, name: str) -> bool:
        return self.tensors[name].tensor_type == GGMLQuantizationType.Q8_0

    def int8_blocks(self, name: str) -> Int8Blocks:
        """The stored codes and per-32 scales of a Q8_0 weight, unchanged."""
        t = self.tensors[name]
        if t.tensor_type != GGMLQuantizationType.Q8_0:
            raise ValueError(f"{name} is {t.tensor_type.name}, not Q8_0")
        rows = int(np.prod(t.shape[1:]))
        codes, scale = _q8_0(np.asarray(t.data, dtype=np.uint8).reshape(rows, -1))
        codes, scale = self._unpermute(name, codes), self._unpermute(name, scale)
        return Int8Blocks(
            torch.from_numpy(np.ascontiguousarray(codes)),
            torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)),
        )

    def dense(self, name: str) -> torch.Tensor:
        """The float32 [out, in] weight, dequantized in memory."""
        t = self.tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(self._unpermute(name, w)))

    def int4_groups(self, name: str) -> Int4Groups:
        """The stored 4-bit codes and per-32 scales of a Q4_0 / Q4_1 / Q4_K weight, unchanged."""
        t = self.tensors[name]
        rows = int(np.prod(t.shape[1:]))
        blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1)
        kind = t.tensor_type
        if kind == GGMLQuantizationType.Q4_K:
            codes, scale, low = _q4_k(blocks)
        elif kind in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1):
            codes, scale, low = _q4_01(blocks, kind == GGMLQuantizationType.Q4_1)
        else:
            raise ValueError(f"{name} is {kind.name}, not a 4-bit block format")
        codes, scale, low = (self._unpermute(name, a) for a in (codes, scale, low))
        return Int4Groups(
            torch.from_numpy(np.ascontiguousarray(codes)),
            torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32)),
        )

    def _unpermute(self, name: str, rows: np.ndarray) -> np.ndarray:
        # The rope permutation only reorders rows, so it applies to codes and scales alike.
        if self.permuted and ".q_proj." in name:
            return _reverse_rope_permute(rows, self.heads)
        if self.permuted and ".k_proj." in name:
            return _reverse_rope_permute(rows, self.kv_heads)
        return rows


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] codes: the low nibbles are elements 0-15, the high 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[rows, bytes] of 34-byte blocks (float16 ``d``, then 32 int8 codes) -> codes, scales."""
    rows = blocks.shape[0]
    b = blocks.reshape(rows, -1, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = b[..., 2:].copy().view(np.int8).reshape(rows, -1)
    return codes, d


def _q4_01(blocks: np.ndarray, has_min: bool) -> tuple[np.ndarray, ...]:
    rows = blocks.shape[0]
    size = 20 if has_min else 18
    b = blocks.reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if has_min:
        low = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    else:
        low = -8.0 * d
    codes = _nibbles(b[..., size - 16 :]).reshape(rows, -1)
    return codes, d, low


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, ...]:
    rows = blocks.shape[0]
    b = blocks.reshape(-1, 144)  # 256 elements: d, dmin, 12 bytes of 6-bit scales, 128 of codes
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = Q4_K.get_scale_min(b[:, 4:16].copy())
    scale = d * sc.astype(np.float32)  # [blocks, 8] one per 32-element sub-block
    low = -dmin * mn.astype(np.float32)
    # 4 chunks of 32 bytes; a chunk's low nibbles are sub-block 2j, its high nibbles 2j + 1
    qs = b[:, 16:].reshape(-1, 4, 32)
    codes = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 256)
    return codes.reshape(rows, -1), scale.reshape(rows, -1), low.reshape(rows, -1)
