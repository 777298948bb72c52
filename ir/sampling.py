"""Sampling parameters of one ``gen`` / ``select`` as one record, shared by the IR and backends."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(slots=True)
class GenParams:
    """What a ``gen`` asks of the model; ``None`` means "not set here".

    A program's node carries only the fields its author wrote; ``merge`` fills the rest from the
    defaults given to ``run`` / ``run_batch`` (the node wins). ``to_native`` gives the dict the
    native API (``Runtime.generate`` and ``POST /generate``) takes, with unset fields left out so
    the worker's own defaults apply.
    """

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: list[str] | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    seed: int | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    # scheduling, not sampling (runtime.sched_fields): request-level fields of the native API
    priority: int | None = None
    tenant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUEST_LEVEL = (
        "return_logprob",
        "logprob_start_len",
        "top_logprobs_num",
        "priority",
        "tenant",
    )

    def merge(self, defaults: GenParams) -> GenParams:
        """This record with every unset field taken from ``defaults``."""
        out = replace(self, extra={**defaults.extra, **self.extra})
        for f in fields(self):
            if f.name != "extra" and getattr(out, f.name) is None:
                setattr(out, f.name, getattr(defaults, f.name))
        return out

    def to_native(self) -> dict[str, Any]:
        """``sampling_params`` for the native API (request-level logprob fields excluded)."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("extra", *self._REQUEST_LEVEL) and getattr(self, f.name) is not None
        }
        out.update(self.extra)
        return out

    def request_fields(self) -> dict[str, Any]:
        """The native API's request-level fields (``return_logprob`` and friends) that are set."""
        return {k: getattr(self, k) for k in self._REQUEST_LEVEL if getattr(self, k) is not None}
