"""Swaps a loaded model's linear layers for weight-only int8 / int4 ones (``--quantization``).

Sources, best first: a GGUF's own blocks in the layer's format (int8 from Q8_0, int4 from Q4_0 /
Q4_1 / Q4_K; no requantization); otherwise the dense weight (the GGUF's tensor dequantized in
memory, or the loaded checkpoint) quantized by the layer. The output head is always int8 (Q8_0
blocks), as llama.cpp keeps its output tensor above 4 bits: it is the widest matrix and the
logits are the most sensitive to it.
Embeddings and norms stay dense (a lookup reads one row; norms are tiny).
"""

from __future__ import annotations

import torch
from torch import nn

from plait.runtime.model.gguf_quant import GGUFWeights, Int4Groups, Int8Blocks
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.models.quant_linear import QUANTIZATIONS, Int4Linear, Int8Linear

# our fused layer -> the checkpoint's layers it holds, rows in this order
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.down_proj": ("mlp.down_proj",),
}


def quantize_model(
    model: LlamaForCausalLM, quantization: str, gguf: GGUFWeights | None = None
) -> None:
    """Replaces every decoder ``Linear`` and the LM head in place. ``gguf`` is the file the
    model was loaded from, if any (its 4-bit blocks are used as stored)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    for i, layer in enumerate(model.model.layers):
        for ours, parts in _FUSED.items():
            parent_name, attr = ours.rsplit(".", 1)
            parent = layer.get_submodule(parent_name)
            dense: Linear = getattr(parent, attr)
            names = [f"model.layers.{i}.{p}.weight" for p in parts]
            setattr(parent, attr, _quantized(dense, names, quantization, gguf))
    head = model.lm_head
    name = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    if gguf is not None and name in gguf and gguf.is_q8_0(name):
        model.lm_head = Int8Linear(*_blocks8([gguf.int8_blocks(name)]))
    elif head.weight.dtype != torch.float32 and gguf is not None and name in gguf:
        model.lm_head = Int8Linear.from_float(gguf.dense(name))
    else:
        model.lm_head = Int8Linear.from_float(_rows(head))


def _quantized(
    dense: Linear, names: list[str], quantization: str, gguf: GGUFWeights | None
) -> nn.Module:
    if dense.bias is not None:
        raise ValueError("quantized linear layers with a bias are not supported")
    from_gguf = gguf is not None and all(n in gguf for n in names)
    if quantization == "int4" and from_gguf and all(gguf.is_four_bit(n) for n in names):
        groups = [gguf.int4_groups(n) for n in names]
        return Int4Linear(*_concat_rows(groups))
    if quantization == "int8" and from_gguf and all(gguf.is_q8_0(n) for n in names):
        return Int8Linear(*_blocks8([gguf.int8_blocks(n) for n in names]))
    # A float32 model already holds the GGUF's values exactly; a narrower one re-reads the file.
    exact = dense.weight.dtype == torch.float32 or not from_gguf
    weight = _rows(dense) if exact else torch.cat([gguf.dense(n) for n in names])
    layer = Int4Linear if quantization == "int4" else Int8Linear
    return layer.from_float(weight)


def _rows(dense: Linear) -> torch.Tensor:
    """The [out, in] float32 weight of a dense ``Linear`` whatever layout it stores."""
    w = dense.weight.detach()
    return (w.t() if dense.transposed else w).float().contiguous()


def _concat_rows(groups: list[Int4Groups]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.cat([g.codes for g in groups]),
        torch.cat([g.scale for g in groups]),
        torch.cat([g.low for g in groups]),
    )


def _blocks8(blocks: list[Int8Blocks]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b.codes for b in blocks]), torch.cat([b.scale for b in blocks])
