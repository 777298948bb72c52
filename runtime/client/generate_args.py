"""The arguments of one ``generate`` call, validated and normalised to one entry per prompt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits, check_request
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.valid_text import check_text

SamplingArg = SamplingParams | dict[str, Any] | None


@dataclass(slots=True)
class SubRequest:
    """One sequence to run: ``params.n == 1``, verified, ids checked against the model."""

    rid: str | None  # None: the submitter names it
    input_ids: list[int]
    params: SamplingParams
    scope: RequestScope = RequestScope()


def expand_n(
    rid: str | None,
    input_ids: list[int],
    params: SamplingParams,
    scope: RequestScope = RequestScope(),
) -> list[SubRequest]:
    """The ``n`` samples of one prompt: sample j has rid ``{rid}-{j}`` and seed ``seed + j``
    (with ``n == 1`` the rid and seed are unchanged). ``params`` is not modified. Check the
    rids of all of a request's prompts together with ``check_unique_rids``."""
    if params.n == 1:
        return [SubRequest(rid, input_ids, params, scope)]
    return [
        SubRequest(
            None if rid is None else f"{rid}-{j}",
            input_ids,
            params.copy(n=1, seed=None if params.seed is None else params.seed + j),
            scope,
        )
        for j in range(params.n)
    ]


def check_unique_rids(subs: list[SubRequest]) -> None:
    """Raises InvalidRequestError unless the named sequences of one request (what
    ``expand_n`` made of each prompt) have distinct rids: a prompt's ``{rid}-{j}`` may equal
    another prompt's rid."""
    rids = [s.rid for s in subs if s.rid is not None]
    if len(set(rids)) != len(rids):
        raise InvalidRequestError("rid", "must be unique within a request")


def parse_generate_args(
    prompt: str | list[str] | None = None,
    sampling_params: Any = None,
    input_ids: list[int] | list[list[int]] | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    rid: str | list[str] | None = None,
    priority: int | None = None,
    tenant: str | None = None,
    *,
    encode: Callable[[str], list[int]],
    limits: ModelLimits,
) -> tuple[bool, list[SubRequest]]:
    """Validates one ``generate`` call (the public API's boundary: the only check a request
    gets on this side) and expands it into sequences, ``n`` consecutive ones per prompt.
    Returns whether the call was one bare prompt with ``n == 1``, and the sequences.
    ``priority`` and ``tenant`` apply to every sequence of the call."""
    scope = RequestScope(priority, tenant)
    if (prompt is None) == (input_ids is None):
        raise InvalidRequestError("prompt", "give exactly one of prompt and input_ids")
    if prompt is not None:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidRequestError("prompt", "must be a string or a non-empty list of strings")
        if any(p == "" for p in prompts):
            raise InvalidRequestError("prompt", "must not be empty")
        for p in prompts:
            check_text("prompt", p)
        token_lists = [encode(p) for p in prompts]
        field = "prompt"
    else:
        field = "input_ids"
        single = bool(input_ids) and isinstance(input_ids[0], int)
        token_lists = [list(input_ids)] if single else [list(x) for x in input_ids]
        if not token_lists:
            raise InvalidRequestError("input_ids", "must not be empty")
    count = len(token_lists)
    if isinstance(sampling_params, list):
        if len(sampling_params) != count:
            raise InvalidRequestError("sampling_params", f"needs one entry per prompt ({count})")
        params = [to_params(p) for p in sampling_params]
    else:
        params = [to_params(sampling_params) for _ in range(count)]
    rids = [rid] if isinstance(rid, str) else rid
    if rids is not None and len(rids) != count:
        raise InvalidRequestError("rid", f"needs one id per prompt ({count})")
    for r in rids or ():
        if not check_text("rid", r):
            raise InvalidRequestError("rid", "must not be empty")
    subs: list[SubRequest] = []
    for i, (ids, p) in enumerate(zip(token_lists, params)):
        p.set_logprob_options(return_logprob, logprob_start_len, top_logprobs_num)
        check_request(p, ids, field, limits)
        subs += expand_n(rids[i] if rids else None, ids, p, scope)
    check_unique_rids(subs)
    return single and params[0].n == 1, subs


def to_params(p: SamplingArg) -> SamplingParams:
    """A fresh SamplingParams from a dict, None (defaults) or another SamplingParams."""
    if isinstance(p, SamplingParams):
        return p.copy()
    if p is None or isinstance(p, dict):
        return SamplingParams.from_dict(p)
    raise InvalidRequestError(
        "sampling_params", f"must be a dict or SamplingParams, got {type(p).__name__}"
    )
