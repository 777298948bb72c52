"""One sequence being generated, and why it finished."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from plait.radix_cache.radix_tree import TreeNode
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.sampling_info import draw_seed


@dataclass(slots=True)
class FinishReason:
    """``type`` is "stop" (EOS, stop string or stop token), "length" or "abort"."""

    type: str
    matched: int | str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "matched": self.matched}
        if self.message:
            d["message"] = self.message
        return d


@dataclass(slots=True)
class Logprobs:
    """Log-probabilities under the model's raw distribution (before temperature or penalties)."""

    token_logprobs: list[float | None] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)


@dataclass(eq=False)
class Req:
    """A request's tokens, its KV bookkeeping and its results.

    Tokens invariant: ``fill_ids == input_ids + output_ids``; outputs change only through
    ``append_output`` and ``set_output``, which keep it.

    KV invariant while the request holds a pool row: ``req_to_token[req_pool_idx, :kv_len]`` are
    the slots of ``fill_ids[:kv_len]``. The first ``len(prefix_indices)`` of them belong to the
    radix tree and are protected by the lock on ``last_node``; the rest are owned by the request
    and freed or handed to the tree when it finishes or is retracted.
    """

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)
    priority: int | None = None  # larger is more urgent (runtime.sched_fields)
    # who asked (the API key's name) and the client's cache salt: the radix cache shares
    # prefixes only between requests with equal salts (and, isolating tenants, equal tenants)
    tenant: str | None = None
    cache_salt: str | None = None

    req_pool_idx: int | None = None
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: TreeNode | None = None
    kv_len: int = 0
    extend_len: int = 0  # tokens computed by the current extend round

    finished_reason: FinishReason | None = None
    cached_tokens: int = 0
    retractions: int = 0
    input_logprobs: Logprobs | None = None
    output_logprobs: Logprobs | None = None

    created_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    # scheduling state (worker.schedule_policy): the sjf length score, computed once; the
    # scheduler step at which the request joined the queue; the scheduler step of its first
    # admission (None while it has never run)
    length_score: float | None = None
    queued_step: int = 0
    admitted_step: int | None = None
    grammar: Any = None  # constrained.GrammarState of a regex / json_schema request
    error: Exception | None = None  # set when the request failed alone (reported, never run)

    # what the output records carried so far (worker.output.take_output)
    sent_ids: int = 0
    sent_logprobs: int = 0
    sent_input_logprobs: bool = False
    # ``input_ids + output_ids``, kept in step by ``append_output`` / ``set_output``, so the
    # per-step path (matching, extend, caching) slices it instead of concatenating.
    fill_ids: list[int] = field(init=False, repr=False)
    # the sampling seed: ``sampling_params.seed``, or drawn once here from torch's global
    # generator, so a row's noise depends on (seed, step) alone for the request's whole life;
    # 0 for a greedy request, which never draws
    sampling_seed: int = field(init=False)
    # bumped by ``set_output``: the outputs were rewritten, not appended to
    output_epoch: int = field(default=0, init=False)
    # the radix tree's version and the key length at the last ``CacheManager.match``
    match_version: int = field(default=-1, init=False)
    match_len: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        self.fill_ids = self.input_ids + self.output_ids
        p = self.sampling_params
        if p.seed is not None:
            self.sampling_seed = p.seed
        else:
            self.sampling_seed = 0 if p.is_greedy else draw_seed()
        if p.return_logprob:
            self.output_logprobs = Logprobs()
            if p.logprob_start_len >= 0:
                self.input_logprobs = Logprobs()

    @property
    def seq_len(self) -> int:
        return len(self.fill_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def max_prefix_len(self) -> int:
        """The longest cached prefix the request may reuse: at least one token must be computed
        to produce logits, and prompt logprobs need every position from their start."""
        cap = self.seq_len - 1
        p = self.sampling_params
        if p.return_logprob and p.logprob_start_len >= 0 and not self.output_ids:
            cap = min(cap, max(p.logprob_start_len - 1, 0))
        return max(cap, 0)

    def remaining_new_tokens(self) -> int:
        return self.sampling_params.max_new_tokens - len(self.output_ids)

    def append_output(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        self.fill_ids.append(token_id)

    def set_output(self, output_ids: list[int]) -> None:
        """Replaces the outputs (jump-forward rewrites them); the one way besides
        ``append_output`` to change them."""
        self.output_ids = output_ids
        del self.fill_ids[len(self.input_ids) :]
        self.fill_ids.extend(output_ids)
        self.output_epoch += 1
        self.match_version = -1
