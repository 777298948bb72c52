"""Runs the model on a ForwardBatch and returns the logits the sampler and logprobs need."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.kernels.attention_backend import AttentionBackend
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch
from plait.runtime.model.models.llama import LlamaForCausalLM

# A forward of this few tokens runs on one CPU thread: its matrix-vector products stream weights
# as fast from one core, and its many small ops skip the cost of waking the others.
_SINGLE_THREAD_MAX_TOKENS = 1


@dataclass(slots=True)
class LogitsOutput:
    next_token_logits: torch.Tensor  # [R, V] float32, one row per request that samples
    prompt_logits: torch.Tensor | None  # [P, V] float32 at the requested prompt positions


class ModelRunner:
    """Owns the model, the KV pool it writes and the attention backend it reads through."""

    def __init__(
        self, model: LlamaForCausalLM, kv_pool: TokenToKVPool, attn: AttentionBackend
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.attn = attn
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def forward(
        self,
        batch: ForwardBatch,
        sample_index: torch.Tensor,  # [R] flat token positions whose logits are sampled
        prompt_index: torch.Tensor | None = None,  # [P] flat positions for prompt logprobs
    ) -> LogitsOutput:
        threads = torch.get_num_threads()
        one_thread = (
            self.device.type == "cpu"
            and threads > 1
            and batch.num_tokens <= _SINGLE_THREAD_MAX_TOKENS
        )
        if one_thread:
            torch.set_num_threads(1)
        try:
            self.attn.init_forward_metadata(batch)
            hidden = self.model(batch, self.kv_pool, self.attn)
            logits = self.model.compute_logits(hidden[sample_index])
            prompt_logits = None
            if prompt_index is not None and prompt_index.numel():
                prompt_logits = self.model.compute_logits(hidden[prompt_index])
        finally:
            if one_thread:
                torch.set_num_threads(threads)
        return LogitsOutput(logits, prompt_logits)
