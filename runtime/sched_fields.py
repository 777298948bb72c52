"""The request fields that steer scheduling, not sampling: ``priority`` and ``tenant``.

Direction of ``priority`` (SGLang's convention): a larger value is more urgent; the worker flag
``schedule_low_priority_values_first`` flips it. ``None`` is the default class, ranked as 0.
``tenant`` names who sent the request (an API key's name or a request field) for the fair
policy; ``None`` is the anonymous tenant. Both are checked wherever a request enters (public
API, HTTP body, worker socket).
"""

from __future__ import annotations

from typing import Any

from plait.runtime.errors import InvalidRequestError

PRIORITY_LIMIT = 2**31 - 1  # fits every int field on the way (msgpack, JSON, torch)
MAX_TENANT_CHARS = 256  # tenant names and cache salts alike (limits.check_cache_scope)


def check_priority(value: Any, field: str = "priority") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(field, f"must be an integer, got {type(value).__name__}")
    if not -PRIORITY_LIMIT <= value <= PRIORITY_LIMIT:
        raise InvalidRequestError(field, f"must be in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}]")
    return value


def check_tenant(value: Any, field: str = "tenant") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_TENANT_CHARS:
        raise InvalidRequestError(
            field, f"must have 1 to {MAX_TENANT_CHARS} characters, got {len(value)}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(field, "must be valid Unicode (a lone surrogate)") from None
    return value
