"""One sequence being generated, and why it finished."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from plait.radix_cache.radix_tree import TreeNode
from plait.runtime.sampling_params import SamplingParams


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

    KV invariant while the request holds a pool row: ``req_to_token[req_pool_idx, :kv_len]`` are
    the slots of the first ``kv_len`` tokens of ``input_ids + output_ids``. The first
    ``len(prefix_indices)`` of them belong to the radix tree and are protected by the lock on
    ``last_node``; the rest are owned by the request and freed or handed to the tree when it
    finishes or is retracted.
    """

    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)

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
    grammar: Any = None  # constrained.GrammarState of a regex / json_schema request
    error: Exception | None = None  # set when the request failed alone (reported, never run)

    # what the output records carried so far (worker.output.take_output)
    sent_ids: int = 0
    sent_logprobs: int = 0
    sent_input_logprobs: bool = False

    def __post_init__(self) -> None:
        p = self.sampling_params
        if p.return_logprob:
            self.output_logprobs = Logprobs()
            if p.logprob_start_len >= 0:
                self.input_logprobs = Logprobs()

    @property
    def fill_ids(self) -> list[int]:
        """Every token whose KV the request needs before it can sample the next one."""
        return self.input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

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
