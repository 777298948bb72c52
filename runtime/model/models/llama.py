"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2) over the paged KV pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plait.kernels.attention_backend import AttentionBackend
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch
from plait.runtime.model.model_config import ModelConfig
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.rotary import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm's arithmetic (float32, cast at the end: the same bits in float32 and
        # bfloat16) in 6 ops instead of its ~12 on CPU, 2-3x faster per decode-step call
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(self.eps))
        return (self.weight.float() * (xf * rstd)).to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        # q, k and v projections fused into one matmul: rows [q | k | v]
        self.qkv_proj = Linear(cfg.hidden_size, q_size + 2 * kv_size, cfg.attention_bias, dtype)
        self.o_proj = Linear(q_size, cfg.hidden_size, False, dtype)
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [N, 1, D]
        hidden: torch.Tensor,  # [N, hidden]
        batch: ForwardBatch,
        kv_pool: TokenToKVPool,
        attn: AttentionBackend,
    ) -> torch.Tensor:
        n, hq, hkv = hidden.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(hidden).view(n, hq + 2 * hkv, self.head_dim)  # heads [q | k | v]
        qk = apply_rotary(qkv[:, : hq + hkv], *rope)  # one rotation for q's and k's heads
        q, k, v = qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv :]
        o = attn.forward(q, k, v, self.layer_id, kv_pool, batch, self.scale)
        return self.o_proj(o)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        # gate and up projections fused: rows [gate | up]
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, False, dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_id, dtype)
        self.mlp = LlamaMLP(cfg, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, rope, hidden, batch, kv_pool, attn) -> torch.Tensor:
        hidden = hidden + self.self_attn(rope, self.input_layernorm(hidden), batch, kv_pool, attn)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        # Passing the weight skips nn.Embedding's normal_() init: the loader builds the model
        # on the meta device, where that init imports torch._dynamo (2 s) for nothing.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.rotary = RotaryEmbedding(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, dtype
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Parameter names follow Hugging Face, except the fused ``qkv_proj`` and ``gate_up_proj``."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, dtype)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)

    def tie_weights(self) -> None:
        """Ties the output head to the embedding: shared, or a transposed copy when the head
        keeps the [in, out] layout (see ``Linear``)."""
        if not self.config.tie_word_embeddings:
            return
        embed = self.model.embed_tokens.weight
        if self.lm_head.transposed:
            with torch.no_grad():
                self.lm_head.weight.copy_(embed.t())
        else:
            self.lm_head.weight = embed

    @torch.inference_mode()
    def forward(
        self, batch: ForwardBatch, kv_pool: TokenToKVPool, attn: AttentionBackend
    ) -> torch.Tensor:
        """Returns the final hidden states [N, hidden] of every token in the batch."""
        hidden = self.model.embed_tokens(batch.input_ids)
        rope = self.model.rotary.lookup(batch.positions)
        for layer in self.model.layers:
            hidden = layer(rope, hidden, batch, kv_pool, attn)
        return self.model.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[M, hidden] -> float32 logits [M, vocab]."""
        return self.lm_head(hidden).float()
