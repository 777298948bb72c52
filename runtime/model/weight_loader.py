"""Loads Hugging Face safetensors weights into plait's models (fusing q/k/v and gate/up,
transposing linear weights to plait's [in, out] layout)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.llama import LlamaForCausalLM

# HF name fragment -> (our fused parameter fragment, shard index)
_STACKED = {
    ".q_proj.": (".qkv_proj.", 0),
    ".k_proj.": (".qkv_proj.", 1),
    ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


def load_weights(model: LlamaForCausalLM, weights: dict[str, torch.Tensor] | Path) -> None:
    """Copies every checkpoint tensor into ``model``; raises if any parameter stays unset."""
    params = dict(model.named_parameters())
    transposed = {
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, Linear) and m.transposed
    }
    unset = set(params)
    loaded_shards: dict[str, set[int]] = {}
    if model.config.tie_word_embeddings:
        unset.discard("lm_head.weight")
    for name, tensor in _iter_tensors(weights):
        if "rotary_emb" in name or (name == "lm_head.weight" and model.config.tie_word_embeddings):
            continue
        for frag, (fused, shard) in _STACKED.items():
            if frag in name:
                target = name.replace(frag, fused)
                sizes = _shard_sizes(model, fused)
                start = sum(sizes[:shard])
                param = params[target]
                if target in transposed:
                    param.data[:, start : start + sizes[shard]].copy_(tensor.t())
                else:
                    param.data[start : start + sizes[shard]].copy_(tensor)
                loaded_shards.setdefault(target, set()).add(shard)
                if len(loaded_shards[target]) == len(sizes):
                    unset.discard(target)
                break
        else:
            if name not in params:
                raise KeyError(
                    f"checkpoint tensor {name!r} has no parameter in {type(model).__name__}"
                )
            param = params[name]
            param.data.copy_(tensor.t() if name in transposed else tensor)
            unset.discard(name)
    if unset:
        raise KeyError(f"parameters missing from the checkpoint: {sorted(unset)[:5]} ...")
    model.tie_weights()


def _shard_sizes(model: LlamaForCausalLM, fused: str) -> list[int]:
    cfg = model.config
    if fused == ".qkv_proj.":
        kv = cfg.num_kv_heads * cfg.head_dim
        return [cfg.num_heads * cfg.head_dim, kv, kv]
    return [cfg.intermediate_size, cfg.intermediate_size]


def _iter_tensors(weights: dict[str, torch.Tensor] | Path):
    if isinstance(weights, dict):
        yield from weights.items()
        return
    files = sorted(Path(weights).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {weights}")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)
