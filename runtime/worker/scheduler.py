"""Continuous batching: admit, prefill (chunked) or decode, sample, stop; one step at a time."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from plait.constrained.backend import GrammarBackend, grammar_key
from plait.radix_cache.cache_manager import CacheManager
from plait.runtime.config import SchedulerConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.messages import ReqOutput
from plait.runtime.model.model_runner import ModelRunner
from plait.runtime.worker.length_ranker import LengthRanker
from plait.runtime.worker.output import SchedulerStats, stream_due, take_output
from plait.runtime.worker.prefill_adder import CLIP_MAX_NEW_TOKENS, PrefillAdder
from plait.runtime.worker.request import FinishReason, Req
from plait.runtime.worker.sampler import SampleOutput, Sampler, takes_raw_argmax
from plait.runtime.worker.sampling_batch import SamplingBatch
from plait.runtime.worker.sampling_info import SamplingBatchInfo
from plait.runtime.worker.schedule_batch import prepare_decode, prepare_extend
from plait.runtime.worker.schedule_policy import PriorityOrder, RankerScorer, SchedulePolicy
from plait.runtime.worker.stop import StopChecker
from plait.runtime.worker.tenant_fairness import VirtualTokenCounters, tenant_of

# Retraction keeps this many decode steps of room for the requests that stay.
RETRACT_DECODE_STEPS = 20


class Scheduler:
    """Owns the waiting queue and the running batch.

    Invariants: prefill wins over decode; at most one request is chunked at a time and it
    continues first; with mixed chunks (while the running batch is at most half the chunk),
    every running request also decodes one token in each prefill forward, its token counted
    in the chunk budget; no request is dropped: under memory pressure the least-advanced
    running request is retracted to the front of the queue, its computed KV handed to the
    radix tree. With priority scheduling, a waiting request more urgent than running ones (by
    more than the threshold) that cannot be admitted retracts the least urgent of them the
    same way, so nothing is lost. ``step_count`` counts steps; latencies in tests and the
    scheduling benchmark are measured in it. A step whose batch only decodes runs up to
    ``num_scheduler_steps`` decode forwards, each exactly as a step of its own would (room
    checked, sampled, stopped); it goes on only while no record is due (no request finished,
    no stream has a chunk to send), nothing waits to be admitted, no running request is
    constrained (jump-forward runs between steps) and the caller's ``interrupted`` (a message
    arrived) is false: no output, arrival or abort waits behind it.
    """

    def __init__(
        self,
        runner: ModelRunner,
        kv: CacheManager,
        stop_checker: StopChecker,
        vocab_size: int,
        config: SchedulerConfig,
    ) -> None:
        self.runner = runner
        self.kv = kv
        self.stop_checker = stop_checker
        self.vocab_size = vocab_size
        self.config = config
        self.fair = (
            VirtualTokenCounters(config.fair_input_weight, config.fair_output_weight)
            if config.enable_fair_scheduling
            else None
        )
        scorer = None
        if config.schedule_policy == "sjf":
            scorer = RankerScorer(LengthRanker.load(config.sjf_ranker_path))
        self.policy = SchedulePolicy(
            config.schedule_policy,
            kv,
            priority=(
                PriorityOrder(config.schedule_low_priority_values_first)
                if config.enable_priority_scheduling
                else None
            ),
            fair=self.fair,
            scorer=scorer,
            starvation_steps=config.sjf_starvation_steps,
            seed=config.schedule_seed,
        )
        self.step_count = 0
        self.sampler = Sampler()
        self.grammar: GrammarBackend | None = None  # set by the engine when it has a tokenizer
        self.eos_ids = sorted(stop_checker.eos_token_ids)
        self.device = runner.device
        self.sampling = SamplingBatch(self.eos_ids, vocab_size, self.device)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked_req: Req | None = None
        self.new_token_ratio = config.init_new_token_ratio
        self.aborted: list[Req] = []  # finished while queued, reported on the next step
        # [0, n) for a decode batch of n, read-only, made once per n (torch.arange cost ~20 us
        # a decode step with the caches cold after the fused step)
        self._decode_rows: dict[int, torch.Tensor] = {}
        # every request from add_request until its final record: queued, compiling, running,
        # or finished and not yet reported
        self.live: dict[str, Req] = {}
        self.stats = SchedulerStats(started=time.monotonic())

    # ---- queue ----------------------------------------------------------------------------

    def add_request(self, req: Req) -> None:
        assert req.rid not in self.live, "a live rid is refused before it gets here"
        self.live[req.rid] = req
        self.stats.prompt_tokens += len(req.input_ids)
        req.queued_step = self.step_count
        if self.fair is not None:
            self.fair.on_arrival(req, {tenant_of(r) for r in self.waiting})
        if self.grammar is None and grammar_key(req) is not None:
            err = InvalidRequestError(
                "regex", "constrained decoding needs a model with a tokenizer"
            )
            req.error, req.finished_reason = err, FinishReason("abort", message=str(err))
            self.aborted.append(req)
        elif self.grammar is None or self.grammar.add(req):
            self.waiting.append(req)

    def abort(self, rid: str) -> bool:
        """Aborts a queued or running request by id, releasing its KV at once (calls come
        between steps); False when no live request has that id."""
        req = self.live.get(rid)
        if req is None or req.finished:
            return False
        if self.grammar is not None:
            self.grammar.abort(rid)  # if it still waits for its grammar
        self.waiting = [r for r in self.waiting if r is not req]
        self.running = [r for r in self.running if r is not req]
        if req is self.chunked_req:
            self.chunked_req = None
        if req.req_pool_idx is not None:
            self.kv.release(req)
        req.finished_reason = FinishReason("abort", message="aborted")
        self.aborted.append(req)
        return True

    def find(self, rid: str) -> Req | None:
        """The live request with id ``rid`` (queued, compiling, running or just aborted)."""
        return self.live.get(rid)

    def fail_all(self, message: str) -> list[ReqOutput]:
        """Ends every live request with an internal error after a step raised (the batch's
        state is unknown); frees what KV it can, so the scheduler keeps serving."""
        live = list(self.live.values())
        for req in live:
            if req.req_pool_idx is not None:
                try:
                    self.kv.release(req)
                except Exception:  # noqa: BLE001 - a corrupt row leaks; the worker lives on
                    req.req_pool_idx = None
            req.error = RuntimeError(message)
            req.finished_reason = FinishReason("abort", message=message)
        self.waiting, self.running, self.aborted, self.chunked_req = [], [], [], None
        if self.grammar is not None:
            self.grammar.waiting.clear()
        return self._outputs(live)

    def is_idle(self) -> bool:
        return (
            not self.waiting
            and not self.running
            and self.chunked_req is None
            and not (self.grammar is not None and self.grammar.waiting)
        )

    def flush_cache(self, tenant: str | None = None) -> bool:
        """Drops every cached prefix (False, nothing dropped, while requests run); with
        ``tenant`` under tenant isolation only that tenant's, at any time (whether it succeeds
        must not tell one tenant that another is running)."""
        if tenant is not None and self.kv.isolate_tenants:
            self.kv.flush_tenant(tenant)
            return True
        if not self.is_idle():
            return False
        self.kv.flush()
        return True

    # ---- one step -------------------------------------------------------------------------

    def step(self, interrupted: Callable[[], bool] | None = None) -> list[ReqOutput]:
        """Runs one forward (or several decode forwards, see the class); returns one record per
        request that produced output, finished or failed (a non-streamed request only when it
        ends). ``interrupted``: whether the caller has a message to hand in before the next."""
        return self._outputs(self._step(interrupted))

    def _outputs(self, touched: list[Req]) -> list[ReqOutput]:
        outputs: list[ReqOutput] = []
        seen: set[int] = set()
        stats = self.stats
        for req in touched:
            if id(req) in seen:
                continue
            seen.add(id(req))
            out = take_output(req, self.config.stream_interval)
            if out is None:
                continue
            if out.error is not None or out.finish_reason is not None:
                del self.live[req.rid]  # its final record
            if out.error is not None:
                stats.errors += 1
            elif out.finish_reason is not None:
                stats.finished_requests += 1
                stats.cached_tokens += req.cached_tokens
                stats.generation_tokens += len(req.output_ids)
            outputs.append(out)
        return outputs

    def _step(self, interrupted: Callable[[], bool] | None = None) -> list[Req]:
        self.step_count += 1
        touched, self.aborted = self.aborted, []
        if self.grammar is not None:
            touched += self._constrained_step()
        mix = self._mix_decodes()
        if mix:
            touched += self._ensure_decode_room()
        reqs = self._schedule_prefill(mixed_decodes=len(self.running) if mix else 0)
        if reqs:
            touched += self._run_extend(reqs, self.running if mix else [])
        elif self.running:
            decoded = self._run_decode()
            touched += decoded
            for _ in range(self.config.num_scheduler_steps - 1):
                if not self._may_decode_again(decoded, interrupted):
                    break
                decoded = self._run_decode()
                touched += decoded
        if self.is_idle():
            self.new_token_ratio = self.config.init_new_token_ratio
        return touched

    def _may_decode_again(self, decoded: list[Req], interrupted: Callable[[], bool] | None) -> bool:
        """Whether another decode forward in this step does what the next step would: the
        batch still decodes, none of ``decoded`` (the last forward's) has a record due, and
        nothing the next step would do first is pending."""
        if not self.running or self.waiting or self.chunked_req is not None or self.aborted:
            return False
        interval = self.config.stream_interval
        if any(r.finished or stream_due(r, interval) for r in decoded):
            return False
        grammar = self.grammar
        if grammar is not None and (
            grammar.waiting or any(r.grammar is not None for r in self.running)
        ):
            return False
        return interrupted is None or not interrupted()

    def _mix_decodes(self) -> bool:
        """Mix when there is something to prefill, and only while the decodes leave at least
        half of the chunk to it, so that admission never starves behind a large running batch."""
        cfg = self.config
        if not cfg.enable_mixed_chunk or not self.running:
            return False
        if not self.waiting and self.chunked_req is None:
            return False  # nothing to prefill: the plain decode step checks room once
        budget = cfg.chunked_prefill_size or cfg.max_prefill_tokens
        return len(self.running) <= budget // 2

    def _schedule_prefill(self, mixed_decodes: int = 0) -> list[Req]:
        cfg = self.config
        self._preempt_for_priority()
        if self.chunked_req is None and (
            not self.waiting or len(self.running) >= cfg.max_running_requests
        ):
            return []
        adder = PrefillAdder(
            self.kv,
            self.running,
            self.new_token_ratio,
            cfg.max_prefill_tokens,
            cfg.chunked_prefill_size,
            mixed_decodes,
        )
        if self.chunked_req is not None:
            adder.add_chunked(self.chunked_req)
        ordered, deferred = self.policy.order(self.waiting, self.step_count)
        for req in ordered:
            if id(req) in deferred:
                continue
            if len(self.running) + len(adder.can_run) >= cfg.max_running_requests:
                break
            if not adder.add_one(req):
                break
        admitted = {id(r) for r in adder.can_run}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        self.chunked_req = adder.new_chunked_req
        self._on_admitted(adder.can_run)
        return adder.can_run

    def _on_admitted(self, reqs: list[Req]) -> None:
        """Records first admissions (queue time) and charges prefill work to tenants."""
        now = None
        for req in reqs:
            if req.admitted_step is None:
                req.admitted_step = self.step_count
                now = now or time.monotonic()
                self.stats.queue_times.observe(req.priority, req.tenant, now - req.created_time)
            if self.fair is not None:
                self.fair.on_prefill(req, req.extend_len)

    def _preempt_for_priority(self) -> None:
        """Retracts running requests, least urgent first (then least advanced), while the most
        urgent waiting request is more urgent than them by more than the threshold and cannot
        be admitted (the running batch is full, or memory is short). Retraction hands their KV
        to the radix tree and requeues them with their outputs: nothing is lost."""
        order, cfg = self.policy.priority, self.config
        if order is None or cfg.disable_priority_preemption or not self.waiting:
            return
        top = max(self.waiting, key=order.urgency)  # the earliest among the most urgent
        bar = order.urgency(top) - cfg.priority_scheduling_preemption_threshold
        victims = sorted(
            (r for r in self.running if order.urgency(r) < bar),
            key=lambda r: (order.urgency(r), len(r.output_ids)),
        )
        if not victims:
            return
        self.kv.match(top)
        retracted: list[Req] = []
        while victims and not self._fits(top):
            victim = victims.pop(0)
            self.kv.release(victim)
            victim.retractions += 1
            retracted.append(victim)
            self.running = [r for r in self.running if r is not victim]
        self.stats.retractions += len(retracted)
        self.stats.preemptions += len(retracted)
        self.waiting.extend(retracted)

    def _fits(self, req: Req) -> bool:
        """Whether admission could take ``req`` now: a free running slot, and room for its
        extend and decode reservation (its whole cached prefix counted as newly locked, so
        the estimate errs towards retracting)."""
        busy = len(self.running) + (self.chunked_req is not None)
        if busy >= self.config.max_running_requests:
            return False
        adder = PrefillAdder(
            self.kv, self.running, self.new_token_ratio, self.config.max_prefill_tokens, None
        )
        decode_room = min(req.remaining_new_tokens(), CLIP_MAX_NEW_TOKENS)
        return req.seq_len + decode_room <= adder.rem_total

    def _run_extend(self, prefills: list[Req], decodes: list[Req]) -> list[Req]:
        """One forward over prefill chunks and, mixed in, one decode token per running request
        (an extend of length 1 on top of its KV)."""
        for req in decodes:
            req.extend_len = 1
        reqs = prefills + decodes
        batch = prepare_extend(reqs, self.kv, self.device)
        sampling: list[Req] = []
        prefilled: list[Req] = []  # max_new_tokens == 0: the prompt is cached, nothing sampled
        sample_index: list[int] = []
        prompt_index: list[int] = []
        prompt_spans: list[tuple[Req, int, int]] = []  # (req, first input index t, count)
        offset = 0
        for req in reqs:
            end = req.kv_len + req.extend_len
            if end == req.seq_len and req.sampling_params.max_new_tokens == 0:
                prefilled.append(req)
            elif end == req.seq_len:
                sampling.append(req)
                sample_index.append(offset + req.extend_len - 1)
            if req.input_logprobs is not None and not req.output_ids:
                t0, t1 = self._prompt_logprob_range(req)
                if t1 > t0:
                    prompt_index.extend(offset + (t - 1 - req.kv_len) for t in range(t0, t1))
                    prompt_spans.append((req, t0, t1 - t0))
            offset += req.extend_len
        out = self.runner.forward(
            batch,
            torch.tensor(sample_index, dtype=torch.int64),
            torch.tensor(prompt_index, dtype=torch.int64) if prompt_index else None,
        )
        self.stats.forward_count += 1
        for req in reqs:
            req.kv_len += req.extend_len
        for req in prefills:
            self.kv.cache_unfinished(req)
        if out.prompt_logits is not None:
            self._record_prompt_logprobs(out.prompt_logits, prompt_spans)
        for req in prefilled:
            req.finished_reason = FinishReason("length", matched=None)
            self.kv.release(req)
        if not sampling:
            return prefilled
        self._sample(sampling, out.next_token_logits)
        self._finish(sampling)
        self.running = [r for r in self.running if not r.finished]
        self.running.extend(r for r in sampling[: len(sampling) - len(decodes)] if not r.finished)
        if decodes:
            self.stats.mixed_forward_count += 1
            self._decay_new_token_ratio()
        return sampling + prefilled

    def _run_decode(self) -> list[Req]:
        out_of_room = self._ensure_decode_room()
        reqs = self.running
        if not reqs:
            return out_of_room
        batch = prepare_decode(reqs, self.kv, self.device)
        info = self.sampling.prepare(reqs)
        argmax_only = takes_raw_argmax(info) and all(
            r.grammar is None and r.output_logprobs is None for r in reqs
        )
        rows = self._decode_rows.get(len(reqs))
        if rows is None:
            rows = self._decode_rows[len(reqs)] = torch.arange(len(reqs))
        out = self.runner.forward(batch, rows, argmax_only=argmax_only)
        self.stats.forward_count += 1
        for req in reqs:
            req.kv_len += 1
        self._sample(reqs, out.next_token_logits, info, out.argmax_ids)
        self._finish(reqs)
        self.running = [r for r in reqs if not r.finished]
        self._decay_new_token_ratio()
        return reqs

    def _decay_new_token_ratio(self) -> None:
        self.new_token_ratio = max(
            self.config.min_new_token_ratio,
            self.new_token_ratio - self.config.new_token_ratio_decay,
        )

    # ---- sampling and stopping ------------------------------------------------------------

    def _sample(
        self,
        reqs: list[Req],
        logits: torch.Tensor,
        info: SamplingBatchInfo | None = None,
        argmax_ids: torch.Tensor | None = None,
    ) -> None:
        """``info``: ``self.sampling.prepare(reqs)`` of this step, if the caller has it.
        ``argmax_ids``: each row's argmax of ``logits``, where the forward gave it (an
        ``argmax_only`` one's): the tokens of a batch that takes the raw argmax."""
        if info is None:
            info = self.sampling.prepare(reqs)
        want_logprobs = any(r.output_logprobs is not None for r in reqs)
        if self.grammar is not None:
            info.vocab_mask = self.grammar.batch_mask(reqs, logits.device)
        if argmax_ids is not None and not want_logprobs and takes_raw_argmax(info):
            res = SampleOutput(argmax_ids, None, None, None)
        else:
            res = self.sampler(logits, info, want_logprobs)
        ids = res.next_token_ids.tolist()
        if want_logprobs:
            lps = res.logprobs.tolist()
            tops = _top_pairs(res.top_logprobs, res.top_logprob_ids)
        if self.fair is not None:
            for req in reqs:
                self.fair.on_decode(req)
        for i, req in enumerate(reqs):
            req.append_output(ids[i])
            if req.output_logprobs is not None:
                req.output_logprobs.token_logprobs.append(lps[i])
                req.output_logprobs.token_ids.append(ids[i])
                k = req.sampling_params.top_logprobs_num
                if k:
                    req.output_logprobs.top_logprobs.append(tops[i][:k])
        self.sampling.advance(res.next_token_ids)
        if self.grammar is not None:
            self.grammar.accept(reqs)

    def _finish(self, reqs: list[Req]) -> None:
        for req in reqs:
            failure = req.grammar.failure if req.grammar is not None else None
            if failure is not None:  # its matcher failed a step: this request ends alone
                req.error = failure
                req.finished_reason = FinishReason("abort", message=str(failure))
            else:
                req.finished_reason = self.stop_checker.check(req)
            if req.finished_reason is not None:
                self.kv.release(req)

    # ---- constrained decoding -------------------------------------------------------------

    def _constrained_step(self) -> list[Req]:
        """Admits requests whose grammar compiled (reports those that failed), then moves
        running requests with forced text back to the queue with the text appended (jump-
        forward): their next extend computes it in one forward."""
        grammar = self.grammar
        ready, failed = grammar.poll()
        self.waiting.extend(ready)
        if not ready and grammar.waiting and not self.waiting and not self.running:
            grammar.wait_any(0.01)  # nothing to run until a grammar compiles
        jumped: list[Req] = []
        for req in self.running:
            if req.grammar is None:
                continue
            jump = grammar.try_jump(req)
            if jump is None:
                continue
            self.kv.release(req)  # the old tokens' KV goes to the tree; the prefix is reused
            output_ids = req.output_ids[: jump.keep] + jump.new_ids
            req.sent_ids = min(req.sent_ids, jump.keep)
            if req.grammar.is_terminal():
                output_ids.append(grammar.eos_token_id(req))
                req.grammar.accept(output_ids[-1])
            req.set_output(output_ids)
            req.finished_reason = self.stop_checker.check(req)
            jumped.append(req)
        if jumped:
            self.running = [r for r in self.running if r not in jumped]
            self.waiting[:0] = [r for r in jumped if not r.finished]
        return failed + [r for r in jumped if r.finished]

    # ---- prompt logprobs ------------------------------------------------------------------

    def _prompt_logprob_range(self, req: Req) -> tuple[int, int]:
        """Input positions t in [t0, t1) whose logprob this extend can produce: the logits at
        position t - 1 must be computed now."""
        lp = req.input_logprobs
        start = req.sampling_params.logprob_start_len
        if start == 0 and not lp.token_logprobs:
            lp.token_logprobs.append(None)  # the first token has no context
            lp.token_ids.append(req.input_ids[0])
            if req.sampling_params.top_logprobs_num:
                lp.top_logprobs.append([])
        t0 = max(start + len(lp.token_logprobs), 1, req.kv_len + 1)
        t1 = min(len(req.input_ids), req.kv_len + req.extend_len + 1)
        return t0, t1

    def _record_prompt_logprobs(
        self, logits: torch.Tensor, spans: list[tuple[Req, int, int]]
    ) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)
        k = max(r.sampling_params.top_logprobs_num for r, _, _ in spans)
        top = logprobs.topk(k, dim=-1) if k else None
        row = 0
        for req, t0, count in spans:
            targets = torch.tensor(req.input_ids[t0 : t0 + count])
            chosen = logprobs[row : row + count].gather(1, targets[:, None]).squeeze(1)
            lp = req.input_logprobs
            lp.token_logprobs.extend(chosen.tolist())
            lp.token_ids.extend(targets.tolist())
            kr = req.sampling_params.top_logprobs_num
            if kr and top is not None:
                pairs = _top_pairs(top.values[row : row + count], top.indices[row : row + count])
                lp.top_logprobs.extend(p[:kr] for p in pairs)
            row += count

    # ---- memory pressure ------------------------------------------------------------------

    def _ensure_decode_room(self) -> list[Req]:
        """Evicts, then retracts the least-advanced requests until every remaining one can
        decode; a request alone with no room left finishes with "length"."""
        kv = self.kv
        if kv.available_size() + kv.evictable_size() >= len(self.running):
            return []
        # fewest outputs first, then the longest prompt (cheapest progress to redo)
        order = sorted(self.running, key=lambda r: (len(r.output_ids), -len(r.input_ids)))
        retracted: list[Req] = []
        while len(order) > 1 and (
            kv.available_size() + kv.evictable_size() < len(order) * RETRACT_DECODE_STEPS
        ):
            req = order.pop(0)
            kv.release(req)
            req.retractions += 1
            retracted.append(req)
        self.stats.retractions += len(retracted)
        self.running = [r for r in self.running if r not in retracted]
        self.waiting = retracted + self.waiting
        out_of_room: list[Req] = []
        if kv.available_size() + kv.evictable_size() < len(self.running):
            out_of_room, self.running = self.running, []
            for req in out_of_room:
                req.finished_reason = FinishReason("length", message="KV cache is full")
                kv.release(req)
        if retracted:
            decoded = sum(len(r.output_ids) for r in self.running)
            max_new = sum(
                min(r.sampling_params.max_new_tokens, CLIP_MAX_NEW_TOKENS) for r in self.running
            )
            self.new_token_ratio = min(
                1.0, (decoded + RETRACT_DECODE_STEPS * len(self.running)) / max(max_new, 1)
            )
        return out_of_room


def _top_pairs(
    values: torch.Tensor | None, ids: torch.Tensor | None
) -> list[list[tuple[float, int]]]:
    if values is None or ids is None:
        return []
    return [list(zip(vr, ir)) for vr, ir in zip(values.tolist(), ids.tolist())]
