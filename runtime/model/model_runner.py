"""Runs the model on a ForwardBatch and returns the logits the sampler and logprobs need."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from plait.kernels.attention_backend import AttentionBackend
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model import fused_decode, huge_pages
from plait.runtime.model.forward_batch import ForwardBatch
from plait.runtime.model.fused_decode import FusedDecode
from plait.runtime.model.models import blas
from plait.runtime.model.models.blas import OpenBLAS
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.thread_policy import ThreadPolicy


@dataclass(slots=True)
class LogitsOutput:
    next_token_logits: torch.Tensor  # [R, V] float32, one row per request that samples
    prompt_logits: torch.Tensor | None  # [P, V] float32 at the requested prompt positions
    # [R] int64: each row's argmax of its raw logits (``sampler.argmax_rows``'s), where an
    # ``argmax_only`` forward's step gave it
    argmax_ids: torch.Tensor | None = None


class ModelRunner:
    """Owns the model, the KV pool it writes and the attention backend it reads through.

    CPU threads: torch's count when the runner is called is the ceiling; the thread policy
    picks the count of each forward. ``float32_matmul`` (``EngineConfig``) decides whether the
    float32 products run on OpenBLAS; if so, on the picked count while torch's own ops run on
    one thread: two busy pools stall each other (``models/blas.py``). ``decode_kernel`` decides
    whether small forwards (``FusedDecode.max_rows`` tokens: decode steps, short prefills) run as one C call
    (``FusedDecode``, on its own threads, likewise with torch's on one); it needs ``[out, in]``
    weights, so the runner re-lays float32 weights out when it is on.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: TokenToKVPool,
        attn: AttentionBackend,
        float32_matmul: str = "auto",
        decode_kernel: str = "auto",
        head_screen: bool = True,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.attn = attn
        self.device = next(model.parameters()).device
        self.fused: FusedDecode | None = None
        fusable = False
        if decode_kernel != "torch":
            reason = fused_decode.unsupported(model, kv_pool, self.device)
            fusable = reason is None
            if fusable:
                for m in model.modules():
                    if isinstance(m, Linear):
                        m.set_layout(False)
                if isinstance(model.lm_head, Linear):
                    model.tie_weights()  # the head and the embedding share one [vocab, hidden]
            elif decode_kernel == "fused":
                raise InvalidRequestError("decode_kernel", f"fused is not available: {reason}")
        # the weights as the products will read them, on huge pages (before the fused step
        # takes their addresses)
        self.huge_page_bytes = (
            huge_pages.adopt_parameters(model) if self.device.type == "cpu" else 0
        )
        if fusable:
            self.fused = FusedDecode(model, kv_pool, head_screen)
        linears = [
            m for m in model.modules() if isinstance(m, Linear) and m.weight.dtype == torch.float32
        ]
        nbytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
        self.openblas: OpenBLAS | None = None
        if linears:
            self.openblas = blas.resolve(float32_matmul, self.device, nbytes)
        for m in linears:
            m.use_openblas(self.openblas is not None)
        # a pool of plait's own runs the products (OpenBLAS, the fused decode step): torch's
        # own ops then run on one thread
        self._own_pool = self.openblas is not None or self.fused is not None
        self.threads: ThreadPolicy | None = None  # CPU: created at the first forward
        self._latched: int | None = None  # pinned: the caller's count (``_thread_ceiling``)
        self.pin_torch_threads = False  # set by processes plait owns, and by ``step_threads``
        # False: every forward uses the caller's count (for side-by-side benches)
        self.adaptive_threads = True

    def _thread_ceiling(self) -> int:
        """torch's thread count as the caller set it. Where plait's own pool does the products
        (OpenBLAS, the fused step) and ``pin_torch_threads`` is set (a process plait owns: the
        worker, the server; or one step of an in-process engine, ``step_threads``), torch's own
        ops run on one thread from the first forward on, so the sampling between forwards does
        not wake a second OpenMP pool either (measured: restoring torch's count after each
        forward cost a sixth of a decode step); the caller's count, latched then, is the
        forwards' ceiling until the caller sets torch's count again. Otherwise torch's count is
        restored after every forward: the caller's process keeps its settings."""
        threads = torch.get_num_threads()
        if not self._own_pool or not self.pin_torch_threads:
            return threads
        if threads != 1 or self._latched is None:
            self._latched = threads
            torch.set_num_threads(1)
        return self._latched

    @contextmanager
    def step_threads(self) -> Iterator[None]:
        """One scheduler step (its forward and its sampling) of an in-process engine, pinned as
        in a process plait owns (``_thread_ceiling``): an OpenMP team woken by the sampling ops
        at the caller's count spins on the other core into the next forward (libgomp's spin
        was 4.6% of a batch's time). The caller's count is torch's again on exit, so the
        caller's code between steps (a stream's consumer) keeps its setting."""
        if not self._own_pool or self.pin_torch_threads or self.device.type != "cpu":
            yield
            return
        caller = torch.get_num_threads()
        self.pin_torch_threads = True
        try:
            yield
        finally:
            self.pin_torch_threads = False
            if torch.get_num_threads() != caller:
                torch.set_num_threads(caller)

    def forward(
        self,
        batch: ForwardBatch,
        sample_index: torch.Tensor,  # [R] flat token positions whose logits are sampled
        prompt_index: torch.Tensor | None = None,  # [P] flat positions for prompt logprobs
        argmax_only: bool = False,  # only each row's argmax of its raw logits is read
    ) -> LogitsOutput:
        """The sampled rows' logits (and the prompt rows' for logprobs). With ``argmax_only``
        the fused step may return each row exact only where its maximum can be and -inf
        elsewhere (``FusedDecode``): the argmax is the same; it gives that argmax too
        (``argmax_ids``), and its logits and argmax are valid until the next forward."""
        threads = self._thread_ceiling()
        use = threads
        if self.device.type == "cpu":
            if self.threads is None or self.threads.candidates[-1] != threads:
                self.threads = ThreadPolicy(threads)  # the caller's count is the ceiling
            use = self.threads.choose(batch.num_tokens)
            if not self.adaptive_threads:
                use = threads
        fused = (
            self.fused is not None
            and (prompt_index is None or not prompt_index.numel())
            and batch.num_tokens <= self.fused.max_rows
        )
        # torch's own ops run on one thread while plait's pool does the products (the fused
        # step, or OpenBLAS); a forward whose products are torch's (a bfloat16 or quantized
        # prefill past the fused step's rows) gets every thread: on one it ran at half speed
        torch_use = use
        if self._own_pool and (fused or self.openblas is not None):
            torch_use = 1
            if self.openblas is not None and not fused:
                self.openblas.set_threads(use)
        before = torch.get_num_threads()
        restore = torch_use != before
        if restore:
            torch.set_num_threads(torch_use)
        start = time.perf_counter()
        try:
            if fused:
                assert self.fused is not None
                if argmax_only:
                    logits, ids = self.fused.forward_argmax(batch, use, sample_index)
                    out = LogitsOutput(logits, None, ids)
                else:
                    out = LogitsOutput(self.fused.forward(batch, use, sample_index), None)
            else:
                batch.cpu_threads = use
                out = self._torch_forward(batch, sample_index, prompt_index)
        finally:
            if restore:
                torch.set_num_threads(before)
        if self.threads is not None:
            self.threads.record(batch.num_tokens, use, time.perf_counter() - start)
        return out

    # the fused step records no autograd either way: entering and leaving inference mode
    # around it cost 20-70 us a decode step (cold caches after the step)
    @torch.inference_mode()
    def _torch_forward(
        self, batch: ForwardBatch, sample_index: torch.Tensor, prompt_index: torch.Tensor | None
    ) -> LogitsOutput:
        self.attn.init_forward_metadata(batch)
        hidden = self.model(batch, self.kv_pool, self.attn)
        logits = self.model.compute_logits(hidden[sample_index])
        prompt_logits = None
        if prompt_index is not None and prompt_index.numel():
            prompt_logits = self.model.compute_logits(hidden[prompt_index])
        return LogitsOutput(logits, prompt_logits)
