"""Sampling and stopping parameters of one request, validated at the public boundary."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.valid_text import check_text

try:
    import re._parser as sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values: [-100, 100]
# Every integer crosses the worker socket as a msgpack int64: a larger one is a 400 here, never
# an encoding error on the client's I/O thread.
INT64_MAX = 2**63 - 1
_BOOL_FIELDS = (
    "ignore_eos",
    "skip_special_tokens",
    "return_logprob",
    "no_stop_trim",
    "spaces_between_special_tokens",
)
MAX_STOP_REGEX_COUNT = 32  # SGLang's limits on stop_regex
MAX_STOP_REGEX_LEN = 256
_GREEDY_EPS = 1e-6
# SGLang's SamplingParams field names that are another name for one of ours
_ALIASES = {"sampling_seed": "seed"}


@dataclass(slots=True)
class SamplingParams:
    """What to sample and when to stop, for one request.

    ``temperature == 0`` means greedy (it becomes top-k 1). ``top_k == -1`` means the whole
    vocabulary. ``seed`` makes the sample depend only on (seed, token position), never on the
    batch the request happens to run in. ``max_new_tokens == 0`` computes the prompt into the
    prefix cache (and its logprobs when asked) and samples nothing.

    The fields are SGLang's (``sampling_seed`` is accepted for ``seed``): ``stop_regex`` stops
    where the output's tail matches a regex (Python ``re``); ``no_stop_trim`` keeps the matched
    stop string, stop regex text or stop token in the text; ``stream_interval`` streams a chunk
    every that many tokens; ``custom_params`` is the payload of SGLang's custom logit
    processors, which plait does not run (as SGLang ignores it without one);
    ``beam_width`` above 1 and ``watermark`` are refused by name.
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
    stop_regex: list[str] = field(default_factory=list)
    no_stop_trim: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stream_interval: int | None = None
    custom_params: dict[str, Any] | None = None
    beam_width: int | None = None
    watermark: Any = None
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    regex: str | None = None  # the whole output must match (outlines / Rust regex syntax)
    json_schema: str | None = None  # JSON text of a schema the output must validate against
    # token id (decimal string, SGLang's and OpenAI's shape: JSON keys are strings) -> a value
    # added to that token's logit before sampling, in [-100, 100]
    logit_bias: dict[str, float] | None = None
    ebnf: str | None = None  # a grammar in xgrammar's EBNF (GBNF-like) the output must match
    # JSON text, SGLang's {"type": "structural_tag", "structures": [{"begin", "schema", "end"}],
    # "triggers": [...]}: free text, but after a trigger the structure's schema applies
    structural_tag: str | None = None

    CONSTRAINTS = ("regex", "json_schema", "ebnf", "structural_tag")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Builds params from a plain dict (API or socket), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        for key in d or {}:
            if key not in known and key not in _ALIASES:
                raise InvalidRequestError(key, "unknown sampling parameter")
        # null means "the default" for every field, as in SGLang
        d = {k: v for k, v in (d or {}).items() if v is not None}
        for alias, name in _ALIASES.items():
            if alias in d:
                value = d.pop(alias)
                if d.get(name, value) != value:
                    raise InvalidRequestError(alias, f"conflicts with {name}")
                d[name] = value
        for name in ("stop", "stop_regex"):
            if isinstance(d.get(name), str):
                d[name] = [d[name]]
        if isinstance(d.get("stop_token_ids"), (set, tuple)):
            d["stop_token_ids"] = list(d["stop_token_ids"])
        for name in ("json_schema", "structural_tag"):
            if isinstance(d.get(name), dict):
                d[name] = json.dumps(d[name])
        if isinstance(d.get("logit_bias"), dict):  # int keys from Python callers
            d["logit_bias"] = {str(k): v for k, v in d["logit_bias"].items()}
        return cls(**d)

    def copy(self, **changes: Any) -> SamplingParams:
        lists = {k: list(getattr(self, k)) for k in ("stop", "stop_token_ids", "stop_regex")}
        bias = None if self.logit_bias is None else dict(self.logit_bias)
        return replace(self, **(lists | {"logit_bias": bias} | changes))

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
        _check_int("max_new_tokens", self.max_new_tokens, lo=0)
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
            _check_int("seed", self.seed, lo=0)
        _check_int("n", self.n, lo=1, hi=128)
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                got = type(getattr(self, name)).__name__
                raise InvalidRequestError(name, f"must be a boolean, got {got}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop", "must be a non-empty string or a list of them")
        for s in self.stop:
            check_text("stop", s)
        if not isinstance(self.stop_token_ids, list):
            raise InvalidRequestError("stop_token_ids", "must be a list of token ids")
        for tid in self.stop_token_ids:
            _check_int("stop_token_ids", tid, lo=0, hi=vocab_size - 1)
        _check_int("logprob_start_len", self.logprob_start_len, lo=-1)
        _check_int("top_logprobs_num", self.top_logprobs_num, lo=0, hi=MAX_TOP_LOGPROBS)
        self._verify_logit_bias(vocab_size)
        self._verify_sglang_fields()
        self._verify_constraint()

    def _verify_logit_bias(self, vocab_size: int) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise InvalidRequestError("logit_bias", "must be an object of token id -> bias")
        for key, value in self.logit_bias.items():
            tid = _token_id(key)
            if tid is None or not 0 <= tid < vocab_size:
                raise InvalidRequestError(
                    "logit_bias", f"keys must be token ids in [0, {vocab_size - 1}], got {key!r}"
                )
            _check_float("logit_bias", value, lo=-MAX_LOGIT_BIAS, hi=MAX_LOGIT_BIAS)

    def logit_bias_items(self) -> list[tuple[int, float]]:
        """``logit_bias`` as (token id, bias) pairs; call after ``verify``."""
        return [(int(k), float(v)) for k, v in (self.logit_bias or {}).items()]

    def _verify_sglang_fields(self) -> None:
        check_stop_regex(self.stop_regex)
        if self.stream_interval is not None:
            _check_int("stream_interval", self.stream_interval, lo=1)
        if self.custom_params is not None and not isinstance(self.custom_params, dict):
            raise InvalidRequestError("custom_params", "must be an object")
        if self.beam_width is not None:
            _check_int("beam_width", self.beam_width, lo=1, hi=1)  # no beam search here
        if self.watermark is not None:
            raise InvalidRequestError("watermark", "watermarking is not supported")

    def _verify_constraint(self) -> None:
        given = []
        for name in self.CONSTRAINTS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidRequestError(name, "must be a non-empty string")
            if value is not None:
                check_text(name, value)
                given.append(name)
        if len(given) > 1:
            raise InvalidRequestError(
                given[-1], f"give at most one of {', '.join(self.CONSTRAINTS)}, got {given}"
            )
        # the spec itself is checked once, where it compiles (the worker's grammar backend);
        # its error names the field and reaches the caller as this request's error


def _token_id(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def check_stop_regex(patterns: Any) -> None:
    """``stop_regex``: at most 32 Python regexes of at most 256 characters, each compiling."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidRequestError("stop_regex", "must be a non-empty string or a list of them")
    if len(patterns) > MAX_STOP_REGEX_COUNT:
        raise InvalidRequestError(
            "stop_regex", f"at most {MAX_STOP_REGEX_COUNT} patterns, got {len(patterns)}"
        )
    for p in patterns:
        check_text("stop_regex", p)
        if len(p) > MAX_STOP_REGEX_LEN:
            raise InvalidRequestError(
                "stop_regex", f"a pattern is at most {MAX_STOP_REGEX_LEN} characters long"
            )
        try:
            re.compile(p)
        except re.error as e:
            raise InvalidRequestError("stop_regex", f"invalid regex {p!r}: {e}") from None


@lru_cache(maxsize=1024)
def regex_width(pattern: str) -> int:
    """The most characters ``pattern`` can match, capped at ``MAX_STOP_REGEX_LEN`` (unbounded
    repeats count as the cap), as SGLang bounds its stop-regex scan."""
    return min(sre_parse.parse(pattern).getwidth()[1], MAX_STOP_REGEX_LEN)


def _check_int(name: str, value: Any, lo: int, hi: int = INT64_MAX) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(name, f"must be an integer, got {type(value).__name__}")
    if value < lo or value > hi:
        shown = str(value) if abs(value) < 10**30 else f"a {value.bit_length()}-bit integer"
        bound = f">= {lo}" if hi == INT64_MAX else f"in [{lo}, {hi}]"
        if value > hi == INT64_MAX:
            bound = f"<= {INT64_MAX} (a 64-bit integer)"
        raise InvalidRequestError(name, f"must be {bound}, got {shown}")


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidRequestError(name, f"must be a number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise InvalidRequestError(name, f"must be in {left}{lo}, {hi}], got {value}")
