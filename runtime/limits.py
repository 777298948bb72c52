"""What a request may ask of a model: token ids inside its vocabulary, context and KV pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.sched_fields import MAX_TENANT_CHARS, check_tenant


@dataclass(slots=True, frozen=True)
class ModelLimits:
    """What the worker reports about its model, for checking requests where they enter (the
    public API, HTTP, the worker socket); ``tokenizer`` encodes text prompts (None: ids only)."""

    vocab_size: int
    context_len: int
    kv_total: int
    tokenizer: Any | None = field(default=None, compare=False)


# a tenant name or cache salt is an opaque label; bounded so one cannot bloat the tree's keys
MAX_CACHE_SCOPE_CHARS = MAX_TENANT_CHARS


def check_cache_scope(tenant: Any, cache_salt: Any) -> None:
    """Raises InvalidRequestError unless ``tenant`` and ``cache_salt`` are each None or a
    non-empty valid-Unicode string of at most ``MAX_CACHE_SCOPE_CHARS`` characters."""
    check_tenant(tenant, "tenant")
    check_tenant(cache_salt, "cache_salt")


def check_request(params: SamplingParams, ids: list[int], field: str, limits: ModelLimits) -> None:
    """The one check of a sequence at a boundary: parameters in range (``n`` included) and
    ids the model can take. Raises InvalidRequestError naming the field."""
    params.verify(limits.vocab_size)
    check_input_ids(ids, field, limits.vocab_size, limits.context_len, limits.kv_total)


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
