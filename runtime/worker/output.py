"""The scheduler's per-step output: one small record per request that produced something."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.runtime.errors import InvalidRequestError
from plait.runtime.messages import ReqOutput
from plait.runtime.worker.queue_times import QueueTimes
from plait.runtime.worker.request import Req


@dataclass(slots=True)
class SchedulerStats:
    """Counters over the worker's lifetime; every consumer reports these same numbers."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0
    errors: int = 0
    forward_count: int = 0
    mixed_forward_count: int = 0
    retractions: int = 0
    preemptions: int = 0  # retractions to admit a more urgent request (priority scheduling)
    started: float = field(default=0.0)
    queue_times: QueueTimes = field(default_factory=QueueTimes)


def stream_due(req: Req, stream_interval: int) -> bool:
    """Whether a running streamed request has a chunk to send: its first token, or its own
    ``sampling_params.stream_interval`` (else the worker's ``stream_interval``) tokens unsent.
    (The server streams a non-streamed HTTP request with an interval past its length: its
    first token, for the time to first token, then its end.)"""
    unsent = len(req.output_ids) - req.sent_ids
    if not req.stream or unsent <= 0:
        return False
    return req.sent_ids == 0 or unsent >= (req.sampling_params.stream_interval or stream_interval)


def take_output(req: Req, stream_interval: int = 1) -> ReqOutput | None:
    """The record of what ``req`` produced since its previous record, or None when there is
    nothing to say: a non-streamed request reports only once, when it ends; a streamed one its
    first token at once, then whenever its stream interval's tokens are unsent (``stream_due``),
    and its end.

    Advances the request's ``sent_*`` counters, so every token, logprob and the prompt's
    logprobs are carried exactly once; the cost is proportional to the new tokens.
    """
    if req.error is not None:
        err = req.error
        if isinstance(err, InvalidRequestError):
            error = [err.field, err.message, "invalid_request"]
        else:
            error = ["", str(err), "internal"]
        reason = req.finished_reason.to_dict() if req.finished_reason else None
        return ReqOutput(req.rid, 0, [], reason, error=error)
    finished = req.finished_reason is not None
    if not finished and not stream_due(req, stream_interval):
        return None
    start = req.sent_ids
    out = ReqOutput(
        req.rid,
        start,
        req.output_ids[start:],
        req.finished_reason.to_dict() if finished else None,
        len(req.input_ids),
        req.cached_tokens,
    )
    req.sent_ids = len(req.output_ids)
    lp = req.output_logprobs
    if lp is not None:
        k = req.sent_logprobs
        out.new_logprobs = lp.token_logprobs[k:]
        out.new_logprob_ids = lp.token_ids[k:]
        if req.sampling_params.top_logprobs_num:
            out.new_top_logprobs = lp.top_logprobs[k:]
        req.sent_logprobs = len(lp.token_logprobs)
    ilp = req.input_logprobs
    if ilp is not None and not req.sent_input_logprobs:
        out.input_logprobs = ilp.token_logprobs
        out.input_logprob_ids = ilp.token_ids
        out.input_top_logprobs = ilp.top_logprobs
        req.sent_input_logprobs = True
    return out
