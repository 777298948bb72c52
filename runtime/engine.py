"""The in-process engine: the worker's core and the client's output streams in one process."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait.runtime.client.generate_args import SamplingArg, SubRequest
from plait.runtime.client.handle import record_error
from plait.runtime.client.output_stream import OutputChunk, OutputStream, TokenTextCache
from plait.runtime.client.text_api import TextAPI
from plait.runtime.config import EngineConfig
from plait.runtime.limits import ModelLimits
from plait.runtime.worker.core import EngineCore
from plait.runtime.worker.scheduler import Scheduler


class Engine(TextAPI):
    """Generates from prompts (text or token ids) with every request of a call batched together.

    ``Engine(model_path, **options)`` takes ``EngineConfig`` / ``SchedulerConfig`` fields as
    keyword arguments (an unknown one raises ``InvalidRequestError`` naming it). ``generate``
    returns, per request, ``{"text", "output_ids", "meta_info"}`` with ``meta_info`` = id,
    prompt_tokens, completion_tokens, cached_tokens, finish_reason (``{"type":
    "stop"|"length"|"abort", "matched": ...}``), e2e_latency and, when asked, input/output
    token logprobs as ``(logprob, token_id, token_text)`` triples. Not thread-safe: one caller
    drives it (``plait.Runtime`` and ``plait serve`` put a worker process or thread in front).
    """

    def __init__(self, model_path: str | Path | None = None, **options: Any) -> None:
        self.config = EngineConfig.from_kwargs(model_path, **options)
        self.core = EngineCore(self.config)
        self.tokenizer = self.core.tokenizer
        self.context_len = self.core.context_len
        self.vocab_size = self.core.vocab_size
        self._token_text = TokenTextCache(self.tokenizer)
        self._rid_counter = itertools.count()

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def limits(self) -> ModelLimits:
        return self.core.limits

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
        priority: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """Runs every request to completion (or, with ``stream``, yields chunks as they come).

        A single prompt with ``n == 1`` returns one dict; otherwise a list, ``n`` consecutive
        entries per prompt. Streaming chunks carry ``index`` (the position in that list),
        ``text`` (cumulative) and ``delta``. ``priority`` (larger is more urgent) and ``tenant``
        steer scheduling (``plait.runtime.sched_fields``).
        """
        single, subs = self._parse(
            prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
            top_logprobs_num, rid, priority, tenant,
        )  # fmt: skip
        streams = self._add(subs, stream)
        if stream:
            return self._stream(streams)
        finals: dict[str, OutputChunk] = {}
        try:
            with self.core.owned():  # no code of the caller's runs between these steps
                for _, chunk in self._run(streams):
                    if chunk.finished:
                        finals[chunk.rid] = chunk
        except BaseException:
            self._abort_unfinished(streams, finals)
            raise
        outs = [self._as_dict(finals[s.rid]) for s in streams]
        return outs[0] if single else outs

    def abort(self, rid: str) -> bool:
        return self.core.abort(rid)

    def flush_cache(self) -> bool:
        """Drops every cached prefix; False (and nothing done) while requests are live."""
        return self.core.flush_cache()

    def check_idle(self) -> None:
        """Asserts the KV accounting invariant; call only when nothing is running."""
        self.core.check_idle()

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    # ---- driving the core -----------------------------------------------------------------

    def _add(self, subs: list[SubRequest], stream: bool) -> list[OutputStream]:
        streams: list[OutputStream] = []
        try:
            for sub in subs:
                rid = sub.rid or f"req-{next(self._rid_counter)}-{uuid.uuid4().hex[:8]}"
                self.core.add_request(rid, sub.input_ids, sub.params, stream, sub.scope)
                streams.append(OutputStream(rid, sub.params, self.tokenizer, self._token_text))
        except BaseException:
            for s in streams:
                self.core.abort(s.rid)  # reported by a later step, to no one
            raise
        return streams

    def _run(self, streams: list[OutputStream]) -> Iterator[tuple[int, OutputChunk]]:
        """Steps the core until every stream has its final chunk; yields (index, chunk). A
        request that failed alone raises its error here."""
        by_rid = {s.rid: (i, s) for i, s in enumerate(streams)}
        pending = len(streams)
        while pending:
            for out in self.core.step():
                entry = by_rid.get(out.rid)
                if entry is None:
                    continue
                index, s = entry
                if out.error is not None:
                    raise record_error(out.rid, *out.error)
                chunk = s.feed(out)
                if chunk.finished:
                    pending -= 1
                yield index, chunk

    def _stream(self, streams: list[OutputStream]) -> Iterator[dict[str, Any]]:
        finished: dict[str, OutputChunk] = {}
        try:
            for index, chunk in self._run(streams):
                if chunk.finished:
                    finished[chunk.rid] = chunk
                out = self._as_dict(chunk)
                out.update(index=index, delta=chunk.delta)
                yield out
        finally:
            self._abort_unfinished(streams, finished)

    def _abort_unfinished(self, streams: list[OutputStream], done: dict[str, Any]) -> None:
        for s in streams:
            if s.rid not in done:
                self.core.abort(s.rid)  # reported by a later step, to no one
