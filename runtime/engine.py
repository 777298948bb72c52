"""The in-process engine: load a model, then generate with continuous batching."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from plait.constrained.backend import GrammarBackend
from plait.constrained.grammar_cache import default_cache_dir
from plait.runtime.client.detokenizer import (
    IncrementalDetokenizer,
    hold_back_stop_prefix,
    output_text,
)
from plait.runtime.client.generate_args import (
    SamplingArg,
    check_input_ids,
    parse_generate_args,
    to_params,
)
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model.loader import LoadedModel, load_model
from plait.runtime.worker.request import Req
from plait.runtime.worker.scheduler import Scheduler, SchedulerConfig


class Engine:
    """Generates from prompts (text or token ids) with every request of a call batched together.

    ``generate`` returns, per request, ``{"text", "output_ids", "meta_info"}`` with
    ``meta_info`` = id, prompt_tokens, completion_tokens, cached_tokens, finish_reason
    (``{"type": "stop"|"length"|"abort", "matched": ...}``), e2e_latency and, when asked,
    input/output token logprobs as ``(logprob, token_id, token_text)`` triples. Not thread-safe:
    one caller drives ``step``; the worker process serialises its clients onto it.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        dtype: str | torch.dtype = "float32",
        device: str = "cpu",
        max_total_tokens: int | None = None,
        mem_fraction_static: float = 0.15,
        max_running_requests: int = 256,
        chunked_prefill_size: int | None = 1024,
        enable_mixed_chunk: bool = True,
        max_prefill_tokens: int = 4096,
        schedule_policy: str = "lpm",
        disable_radix_cache: bool = False,
        context_length: int | None = None,
        attention_backend: str = "auto",
        load_format: str = "auto",
        num_threads: int | None = None,
        grammar_compile_timeout: float = 60.0,
        grammar_cache_dir: str | Path | None = "default",
        disable_jump_forward: bool = False,
    ) -> None:
        """``grammar_cache_dir``: where compiled regex / JSON schema grammars persist
        ("default": ``~/.cache/plait/grammars``; None: memory only)."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.loaded: LoadedModel = load_model(
            model_path,
            dtype=dtype,
            device=device,
            max_total_tokens=max_total_tokens,
            mem_fraction_static=mem_fraction_static,
            max_running_requests=max_running_requests,
            disable_radix_cache=disable_radix_cache,
            context_length=context_length,
            attention_backend=attention_backend,
            load_format=load_format,
        )
        m = self.loaded
        self.tokenizer = m.tokenizer
        self.context_len = m.context_len
        self.vocab_size = m.config.vocab_size
        self.scheduler = Scheduler(
            m.runner,
            m.kv,
            m.stop_checker,
            m.config.vocab_size,
            SchedulerConfig(
                schedule_policy=schedule_policy,
                chunked_prefill_size=chunked_prefill_size,
                enable_mixed_chunk=enable_mixed_chunk,
                max_prefill_tokens=max_prefill_tokens,
                max_running_requests=max_running_requests,
            ),
        )
        if self.tokenizer is not None:
            cache_dir = default_cache_dir() if grammar_cache_dir == "default" else grammar_cache_dir
            self.scheduler.grammar = GrammarBackend(
                self.tokenizer,
                m.stop_checker.eos_token_ids,
                m.config.vocab_size,
                compile_timeout=grammar_compile_timeout,
                cache_dir=None if cache_dir is None else Path(cache_dir),
                jump_forward=not disable_jump_forward,
            )
        self._rid_counter = itertools.count()

    # ---- public API -----------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: SamplingArg | list[SamplingArg] = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        stream: bool = False,
        rid: str | list[str] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """Runs every request to completion (or, with ``stream``, yields chunks as they come).

        A single prompt with ``n == 1`` returns one dict; otherwise a list, ``n`` consecutive
        entries per prompt. Streaming chunks carry ``index`` (the position in that list),
        ``text`` (cumulative) and ``delta``.
        """
        single, reqs = self.make_requests(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            rid,
            stream,
        )
        if stream:
            return self._stream(reqs)
        for req in reqs:
            self.scheduler.add_request(req)
        pending = {id(r) for r in reqs}
        while pending:
            for req in self.scheduler.step():
                if req.finished:
                    pending.discard(id(req))
        for req in reqs:
            if req.error is not None:
                raise req.error
        outs = [self._result(r) for r in reqs]
        return outs[0] if single else outs

    def abort(self, rid: str) -> bool:
        return self.scheduler.abort(rid)

    def flush_cache(self) -> bool:
        """Drops every cached prefix; False (and nothing done) while requests are live."""
        return self.scheduler.flush_cache()

    def check_idle(self) -> None:
        """Asserts the KV accounting invariant; call only when nothing is running."""
        assert self.scheduler.is_idle(), "engine is not idle"
        self.loaded.kv.check_idle()

    def encode(self, text: str) -> list[int]:
        self._need_tokenizer("prompt")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        self._need_tokenizer("messages")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    # ---- requests -------------------------------------------------------------------------

    def make_requests(
        self,
        prompt,
        sampling_params,
        input_ids,
        return_logprob,
        logprob_start_len,
        top_logprobs_num,
        rid,
        stream,
    ) -> tuple[bool, list[Req]]:
        """Validates one call's arguments and builds its requests (``n`` expanded, rid
        ``base-j``); returns whether the call was a single prompt with ``n == 1``."""
        args = parse_generate_args(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            rid,
            encode=self.encode,
            to_params=to_params,
            vocab_size=self.vocab_size,
        )
        reqs: list[Req] = []
        for i, (ids, p) in enumerate(zip(args.token_lists, args.params)):
            self._check_ids(ids, args.field)
            base = (
                args.rids[i]
                if args.rids
                else f"req-{next(self._rid_counter)}-{uuid.uuid4().hex[:8]}"
            )
            for j in range(p.n):
                sub = p.copy(n=1, seed=None if p.seed is None else p.seed + j)
                reqs.append(
                    Req(
                        rid=base if p.n == 1 else f"{base}-{j}",
                        input_ids=ids,
                        sampling_params=sub,
                        stream=stream,
                    )
                )
        single, params = args.single, args.params
        return single and params[0].n == 1, reqs

    def _check_ids(self, ids: list[int], field: str) -> None:
        check_input_ids(ids, field, self.vocab_size, self.context_len, self.loaded.kv.total_size())

    def _need_tokenizer(self, field: str) -> None:
        if self.tokenizer is None:
            raise InvalidRequestError(
                field, "this model was loaded without a tokenizer; pass input_ids"
            )

    # ---- results --------------------------------------------------------------------------

    def _result(self, req: Req) -> dict[str, Any]:
        text = output_text(self.tokenizer, req) if self.tokenizer is not None else None
        meta = build_meta_info(req, self._token_text)
        return {"text": text, "output_ids": list(req.output_ids), "meta_info": meta}

    def _token_text(self, tid: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([tid])

    def _stream(self, reqs: list[Req]) -> Iterator[dict[str, Any]]:
        for req in reqs:
            self.scheduler.add_request(req)
        index = {id(r): i for i, r in enumerate(reqs)}
        detok = {
            id(r): IncrementalDetokenizer(self.tokenizer, r.sampling_params.skip_special_tokens)
            for r in reqs
        }
        raw = {id(r): "" for r in reqs}
        sent = {id(r): "" for r in reqs}
        seen = {id(r): 0 for r in reqs}
        pending = set(index)
        try:
            while pending:
                for req in self.scheduler.step():
                    key = id(req)
                    if key not in pending:
                        continue
                    new_ids = req.output_ids[seen[key] :]
                    seen[key] = len(req.output_ids)
                    if req.error is not None:
                        pending.discard(key)
                        raise req.error
                    if req.finished:
                        pending.discard(key)
                        text = output_text(self.tokenizer, req) if self.tokenizer else ""
                    else:
                        raw[key] += detok[key].feed(new_ids) if self.tokenizer else ""
                        text = hold_back_stop_prefix(raw[key], req.sampling_params.stop)
                    delta = text[len(sent[key]) :] if text.startswith(sent[key]) else text
                    sent[key] = text
                    chunk = self._result(req)
                    chunk.update(index=index[key], text=text, delta=delta)
                    yield chunk
        finally:
            for req in reqs:
                if id(req) in pending:
                    self.scheduler.abort(req.rid)


TokenText = Callable[[int], "str | None"] | None


def build_meta_info(
    req: Req, token_text: TokenText, logprobs_from: int = 0, with_input_logprobs: bool = True
) -> dict[str, Any]:
    """``Engine``'s meta_info for ``req``. Output logprobs start at output position
    ``logprobs_from`` (the worker streams increments); ``token_text`` None leaves the text slot
    of each triple None."""
    meta: dict[str, Any] = {
        "id": req.rid,
        "prompt_tokens": len(req.input_ids),
        "completion_tokens": len(req.output_ids),
        "cached_tokens": req.cached_tokens,
        "finish_reason": req.finished_reason.to_dict() if req.finished_reason else None,
        "e2e_latency": time.monotonic() - req.created_time,
    }
    text = token_text or (lambda _t: None)
    if req.output_logprobs is not None:
        lp = req.output_logprobs
        meta["output_token_logprobs"] = [
            (v, t, text(t))
            for v, t in zip(lp.token_logprobs[logprobs_from:], lp.token_ids[logprobs_from:])
        ]
        meta["output_top_logprobs"] = _top_triples(lp.top_logprobs[logprobs_from:], text)
    if req.input_logprobs is not None and with_input_logprobs:
        lp = req.input_logprobs
        meta["input_token_logprobs"] = [
            (v, t, text(t)) for v, t in zip(lp.token_logprobs, lp.token_ids)
        ]
        meta["input_top_logprobs"] = _top_triples(lp.top_logprobs, text)
    return meta


def _top_triples(rows: list[list[tuple[float, int]]], text) -> list[list[tuple]]:
    return [[(v, t, text(t)) for v, t in row] for row in rows]
