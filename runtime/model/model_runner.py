"""Runs the model on a ForwardBatch and returns the logits the sampler and logprobs need."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from plait.kernels.attention_backend import AttentionBackend
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model.forward_batch import ForwardBatch
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.thread_policy import ThreadPolicy


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
        self.threads: ThreadPolicy | None = None  # CPU: created at the first forward
        # False: every forward uses the caller's count (for side-by-side benches)
        self.adaptive_threads = True

    @torch.inference_mode()
    def forward(
        self,
        batch: ForwardBatch,
        sample_index: torch.Tensor,  # [R] flat token positions whose logits are sampled
        prompt_index: torch.Tensor | None = None,  # [P] flat positions for prompt logprobs
    ) -> LogitsOutput:
        threads = torch.get_num_threads()
        use = threads
        if self.device.type == "cpu":
            if self.threads is None or self.threads.candidates[-1] != threads:
                self.threads = ThreadPolicy(threads)  # the caller's count is the ceiling
            use = self.threads.choose(batch.num_tokens)
            if not self.adaptive_threads:
                use = threads
        if use != threads:
            torch.set_num_threads(use)
        start = time.perf_counter()
        try:
            self.attn.init_forward_metadata(batch)
            hidden = self.model(batch, self.kv_pool, self.attn)
            logits = self.model.compute_logits(hidden[sample_index])
            prompt_logits = None
            if prompt_index is not None and prompt_index.numel():
                prompt_logits = self.model.compute_logits(hidden[prompt_index])
        finally:
            if use != threads:
                torch.set_num_threads(threads)
        if self.threads is not None:
            self.threads.record(batch.num_tokens, use, time.perf_counter() - start)
        return LogitsOutput(logits, prompt_logits)
