"""Sampling and stopping parameters of one request, validated at the public boundary."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from plait.runtime.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20
_GREEDY_EPS = 1e-6


@dataclass(slots=True)
class SamplingParams:
    """What to sample and when to stop, for one request.

    ``temperature == 0`` means greedy (it becomes top-k 1). ``top_k == -1`` means the whole
    vocabulary. ``seed`` makes the sample depend only on (seed, token position), never on the
    batch the request happens to run in.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    regex: str | None = None  # the whole output must match (outlines / Rust regex syntax)
    json_schema: str | None = None  # JSON text of a schema the output must validate against
    ebnf: str | None = None  # a grammar in xgrammar's EBNF (GBNF-like) the output must match
    # JSON text, SGLang's {"type": "structural_tag", "structures": [{"begin", "schema", "end"}],
    # "triggers": [...]}: free text, but after a trigger the structure's schema applies
    structural_tag: str | None = None

    CONSTRAINTS = ("regex", "json_schema", "ebnf", "structural_tag")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Builds params from a plain dict (API or socket), rejecting unknown keys by name."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise InvalidRequestError(key, "unknown sampling parameter")
        if isinstance(d.get("stop"), str):
            d["stop"] = [d["stop"]]
        if d.get("stop") is None:
            d.pop("stop", None)
        if d.get("stop_token_ids") is None:
            d.pop("stop_token_ids", None)
        for name in ("json_schema", "structural_tag"):
            if isinstance(d.get(name), dict):
                d[name] = json.dumps(d[name])
        return cls(**d)

    def copy(self, **changes: Any) -> SamplingParams:
        return replace(
            self, stop=list(self.stop), stop_token_ids=list(self.stop_token_ids), **changes
        )

    def set_logprob_options(
        self,
        return_logprob: bool | None,
        logprob_start_len: int | None,
        top_logprobs_num: int | None,
    ) -> None:
        """Applies a call's request-level logprob fields (None leaves a field as it is)."""
        if return_logprob is not None:
            self.return_logprob = return_logprob
        if logprob_start_len is not None:
            self.logprob_start_len = logprob_start_len
        if top_logprobs_num is not None:
            self.top_logprobs_num = top_logprobs_num

    @property
    def is_constrained(self) -> bool:
        return any(getattr(self, name) is not None for name in self.CONSTRAINTS)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1

    def verify(self, vocab_size: int) -> None:
        """Raises InvalidRequestError naming the first field outside its range."""
        _check_int("max_new_tokens", self.max_new_tokens, lo=1)
        _check_int("min_new_tokens", self.min_new_tokens, lo=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise InvalidRequestError(
                "min_new_tokens",
                f"must be <= max_new_tokens ({self.max_new_tokens}), got {self.min_new_tokens}",
            )
        _check_float("temperature", self.temperature, lo=0.0, hi=100.0)
        _check_float("top_p", self.top_p, lo=0.0, hi=1.0, lo_open=True)
        _check_int("top_k", self.top_k, lo=-1)
        if self.top_k == 0:
            raise InvalidRequestError("top_k", "must be -1 (whole vocabulary) or >= 1, got 0")
        _check_float("min_p", self.min_p, lo=0.0, hi=1.0)
        _check_float("frequency_penalty", self.frequency_penalty, lo=-2.0, hi=2.0)
        _check_float("presence_penalty", self.presence_penalty, lo=-2.0, hi=2.0)
        _check_float("repetition_penalty", self.repetition_penalty, lo=0.0, hi=2.0, lo_open=True)
        if self.seed is not None:
            _check_int("seed", self.seed, lo=0, hi=2**63 - 1)
        _check_int("n", self.n, lo=1, hi=128)
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop", "must be a non-empty string or a list of them")
        for tid in self.stop_token_ids:
            _check_int("stop_token_ids", tid, lo=0, hi=vocab_size - 1)
        _check_int("logprob_start_len", self.logprob_start_len, lo=-1)
        _check_int("top_logprobs_num", self.top_logprobs_num, lo=0, hi=MAX_TOP_LOGPROBS)
        self._verify_constraint()

    def _verify_constraint(self) -> None:
        given = []
        for name in self.CONSTRAINTS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidRequestError(name, "must be a non-empty string")
            if value is not None:
                given.append(name)
        if len(given) > 1:
            raise InvalidRequestError(
                given[-1], f"give at most one of {', '.join(self.CONSTRAINTS)}, got {given}"
            )
        # the spec itself is checked once, where it compiles (the worker's grammar backend);
        # its error names the field and reaches the caller as this request's error


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(name, f"must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InvalidRequestError(name, f"must be {bound}, got {value}")


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequestError(name, f"must be a number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise InvalidRequestError(name, f"must be in {left}{lo}, {hi}], got {value}")
