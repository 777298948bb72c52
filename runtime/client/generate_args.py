"""The arguments of one ``generate`` call, validated and normalised to one entry per prompt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams

SamplingArg = SamplingParams | dict[str, Any] | None


@dataclass(slots=True)
class GenerateArgs:
    """Invariant: ``token_lists``, ``params`` (and ``rids`` when given) have one entry per
    prompt; every ``params`` entry is a fresh copy with the call-level logprob options applied
    and has passed ``verify``."""

    single: bool  # one prompt given bare (not in a list)
    field: str  # "prompt" or "input_ids": how the caller gave the tokens
    token_lists: list[list[int]]
    params: list[SamplingParams]
    rids: list[str] | None


def parse_generate_args(
    prompt: str | list[str] | None,
    sampling_params: Any,
    input_ids: list[int] | list[list[int]] | None,
    return_logprob: bool | None,
    logprob_start_len: int | None,
    top_logprobs_num: int | None,
    rid: str | list[str] | None,
    *,
    encode: Callable[[str], list[int]],
    to_params: Callable[[Any], SamplingParams],
    vocab_size: int,
) -> GenerateArgs:
    if (prompt is None) == (input_ids is None):
        raise InvalidRequestError("prompt", "give exactly one of prompt and input_ids")
    if prompt is not None:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidRequestError("prompt", "must be a string or a non-empty list of strings")
        if any(p == "" for p in prompts):
            raise InvalidRequestError("prompt", "must not be empty")
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
    for p in params:
        if return_logprob is not None:
            p.return_logprob = return_logprob
        if logprob_start_len is not None:
            p.logprob_start_len = logprob_start_len
        if top_logprobs_num is not None:
            p.top_logprobs_num = top_logprobs_num
        p.verify(vocab_size)
    return GenerateArgs(single, field, token_lists, params, rids)


def to_params(p: SamplingArg) -> SamplingParams:
    """A fresh SamplingParams from a dict, None (defaults) or another SamplingParams."""
    if isinstance(p, SamplingParams):
        return p.copy()
    if p is None or isinstance(p, dict):
        return SamplingParams.from_dict(p)
    raise InvalidRequestError(
        "sampling_params", f"must be a dict or SamplingParams, got {type(p).__name__}"
    )


def check_input_ids(
    ids: list[int], field: str, vocab_size: int, context_len: int, pool_size: int
) -> None:
    """Raises InvalidRequestError unless ``ids`` is a non-empty prompt of in-vocabulary ids that
    leaves room to generate in the context and fits the KV pool."""
    if not isinstance(ids, list) or not ids:
        raise InvalidRequestError(field, "must not be empty")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise InvalidRequestError(
                field, f"token id {t!r} outside the vocabulary [0, {vocab_size})"
            )
    if len(ids) >= context_len:
        raise InvalidRequestError(
            field,
            f"{len(ids)} tokens leave no room to generate in the context length {context_len}",
        )
    if len(ids) + 1 > pool_size:
        raise InvalidRequestError(
            field, f"{len(ids)} tokens exceed the KV cache capacity of {pool_size} tokens"
        )
