"""The worker's core: one model, its KV memory and the scheduler; requests in, records out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from plait.constrained.backend import GrammarBackend
from plait.constrained.grammar_cache import default_cache_dir
from plait.kernels.select import make_attention_backend
from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.runtime.config import EngineConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits
from plait.runtime.messages import ReqOutput
from plait.runtime.model.loader import LoadedModel, kv_pool_tokens, load_model
from plait.runtime.model.model_runner import ModelRunner
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.request import Req
from plait.runtime.worker.scheduler import Scheduler
from plait.runtime.worker.stop import StopChecker

# Request rows beyond max_running_requests: room for a chunked request and retraction churn.
_EXTRA_ROWS = 8


class EngineCore:
    """Loads the model from an ``EngineConfig`` and runs the scheduler over it.

    ``add_request`` validates at this boundary (the worker socket feeds it raw values) and
    raises ``InvalidRequestError`` naming the field; ``step`` runs one forward and returns the
    step's ``ReqOutput`` records. Not thread-safe: one caller drives it (the worker loop, the
    in-process engine, or the server's engine thread).
    """

    def __init__(self, config: EngineConfig) -> None:
        config.validate()
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.loaded: LoadedModel = load_model(
            config.model_path,
            dtype=config.dtype,
            device=config.device,
            context_length=config.context_length,
            load_format=config.load_format,
            quantization=config.quantization,
        )
        m = self.loaded
        self.tokenizer = m.tokenizer
        self.context_len = m.context_len
        self.vocab_size = m.config.vocab_size
        pool_tokens = config.max_total_tokens or kv_pool_tokens(
            m.config, m.dtype, m.device, config.mem_fraction_static
        )
        kv_pool = TokenToKVPool(
            pool_tokens,
            m.config.num_layers,
            m.config.num_kv_heads,
            m.config.head_dim,
            m.dtype,
            m.device,
        )
        rows = config.scheduler.max_running_requests + _EXTRA_ROWS
        req_pool = ReqToTokenPool(rows, m.context_len + _EXTRA_ROWS, m.device)
        self.cache = CacheManager(
            req_pool,
            kv_pool,
            disable_radix_cache=config.disable_radix_cache,
            isolate_tenants=config.cache_isolation == "tenant",
        )
        attn = make_attention_backend(config.attention_backend, m.config, m.device)
        self.runner = ModelRunner(
            m.model,
            kv_pool,
            attn,
            config.float32_matmul,
            config.decode_kernel,
            head_screen=not config.disable_head_screen,
        )
        stop_checker = StopChecker(m.tokenizer, m.eos_token_ids, m.context_len)
        self.scheduler = Scheduler(
            self.runner, self.cache, stop_checker, self.vocab_size, config.scheduler
        )
        if self.tokenizer is not None:
            self.scheduler.grammar = self._grammar_backend(stop_checker.eos_token_ids)

    def _grammar_backend(self, eos: set[int]) -> GrammarBackend:
        c = self.config
        cache_dir = default_cache_dir() if c.grammar_cache_dir == "default" else c.grammar_cache_dir
        return GrammarBackend(
            self.tokenizer,
            eos,
            self.vocab_size,
            compile_timeout=c.grammar_compile_timeout,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            jump_forward=not c.disable_jump_forward,
            backend=c.grammar_backend,
            memory_limit_mb=c.grammar_compile_memory_mb,
        )

    # ---- requests -------------------------------------------------------------------------

    def add_request(
        self,
        rid: str,
        input_ids: list[int],
        params: SamplingParams,
        stream: bool = False,
        scope: RequestScope = RequestScope(),
    ) -> None:
        """Queues one sequence whose params (``n == 1``) and ids the caller checked with
        ``check_request`` at its boundary; raises InvalidRequestError for a bad or live rid."""
        if not isinstance(rid, str) or not rid:
            raise InvalidRequestError("rid", "must be a non-empty string")
        if self.scheduler.find(rid) is not None:
            raise InvalidRequestError("rid", f"{rid!r} is already running")
        assert params.n == 1, "callers expand n"
        req = Req(
            rid=rid,
            input_ids=list(input_ids),
            sampling_params=params,
            stream=stream,
            priority=scope.priority,
            tenant=scope.tenant,
            cache_salt=scope.cache_salt,
        )
        self.scheduler.add_request(req)

    def abort(self, rid: str) -> bool:
        return self.scheduler.abort(rid)

    def own_process(self) -> None:
        """For a process plait owns, whose model no code outside plait reaches (the worker,
        the in-process server): torch's threads stay pinned between steps (``ModelRunner``),
        and the fused step skips its per-call address check (``FusedDecode``)."""
        self.runner.pin_torch_threads = True
        if self.runner.fused is not None:
            self.runner.fused.check_addresses = False

    @contextmanager
    def owned(self) -> Iterator[None]:
        """``own_process``'s settings while the caller runs no code of its own between steps
        (an in-process engine's non-streamed ``generate``): the fused step checks its addresses
        once, here, and torch's threads are pinned once, not per step; the caller's thread
        count and the per-call check are back on exit. Nothing in a process that owns itself."""
        runner, fused = self.runner, self.runner.fused
        if runner.pin_torch_threads:  # the worker's, the server's, or an enclosing owned()
            yield
            return
        with runner.step_threads():
            if fused is None or not fused.check_addresses:
                yield
                return
            fused.check()
            fused.check_addresses = False
            try:
                yield
            finally:
                fused.check_addresses = True

    def step(self, interrupted: Callable[[], bool] | None = None) -> list[ReqOutput]:
        """One scheduler step; ``interrupted`` (a message waits for the caller) ends a step of
        several decode forwards (``num_scheduler_steps``) early."""
        with self.runner.step_threads():
            return self.scheduler.step(interrupted)

    def fail_all(self, message: str) -> list[ReqOutput]:
        """After a step raised: the batch's state is unknown, so every live request fails
        (an error record each) and is released; the engine keeps serving new requests."""
        return self.scheduler.fail_all(message)

    @property
    def has_work(self) -> bool:
        """True while a ``step`` would do something (run, admit, or report an abort)."""
        return not self.scheduler.is_idle() or bool(self.scheduler.aborted)

    # ---- introspection --------------------------------------------------------------------

    @property
    def kv_total(self) -> int:
        return self.cache.total_size()

    @property
    def limits(self) -> ModelLimits:
        return ModelLimits(self.vocab_size, self.context_len, self.kv_total, self.tokenizer)

    def flush_cache(self, tenant: str | None = None) -> bool:
        """Drops every cached prefix; False (and nothing done) while requests are live. With
        ``tenant`` under tenant isolation: only that tenant's, always (``Scheduler``)."""
        return self.scheduler.flush_cache(tenant)

    def shutdown(self) -> None:
        """Kills the grammar compile processes (a compile in flight fails); the engine takes
        no constrained request after this."""
        if self.scheduler.grammar is not None:
            self.scheduler.grammar.cache.shutdown()

    def check_idle(self) -> None:
        """Asserts the KV accounting invariant; call only when nothing is running."""
        assert self.scheduler.is_idle(), "engine is not idle"
        self.cache.check_idle()

    def info(self) -> dict[str, Any]:
        """What a client needs to validate requests up front and to load the tokenizer."""
        return {
            "vocab_size": self.vocab_size,
            "context_len": self.context_len,
            "kv_total": self.kv_total,
            "has_tokenizer": self.tokenizer is not None,
            "model_path": str(self.loaded.path),
            "pid": os.getpid(),
            "cache_isolation": "tenant" if self.cache.isolate_tenants else "global",
        }

    def stats(self) -> dict[str, Any]:
        """The one stats record every consumer reports (worker socket, /metrics, /health)."""
        sched, cache, st = self.scheduler, self.cache, self.scheduler.stats
        total = cache.total_size()
        free, cached = cache.available_size(), cache.evictable_size()
        idle_ok: bool | None = None
        if sched.is_idle() and not sched.aborted:
            try:
                self.check_idle()
                idle_ok = True
            except AssertionError:
                idle_ok = False
        return {
            "running": len(sched.running) + (sched.chunked_req is not None),
            "queued": len(sched.waiting),
            "kv_used_tokens": total - free - cached,
            "kv_cached_tokens": cached,
            "kv_total_tokens": total,
            "kv_usage": (total - free - cached) / total if total else 0.0,
            "cache_hit_rate": st.cached_tokens / max(st.prompt_tokens, 1),
            "prompt_tokens": st.prompt_tokens,
            "cached_tokens": st.cached_tokens,
            "generation_tokens": st.generation_tokens,
            "finished_requests": st.finished_requests,
            "forward_count": st.forward_count,
            "mixed_forward_count": st.mixed_forward_count,
            "retractions": st.retractions,
            "preemptions": st.preemptions,
            "schedule_policy": sched.policy.policy,
            "queue_time": st.queue_times.to_dict(),
            "tenant_service": dict(sched.fair.counters) if sched.fair is not None else {},
            "errors": st.errors,
            "kv_idle_ok": idle_ok,
            "uptime_s": time.monotonic() - st.started,
        }
