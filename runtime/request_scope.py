"""Who sent a request and how the runtime treats it beyond sampling: one record from where the
request enters (an HTTP body and its API key, the Python API) to the worker's ``Req``."""

from __future__ import annotations

from dataclasses import dataclass

from plait.runtime.limits import check_cache_scope
from plait.runtime.sched_fields import check_priority


@dataclass(slots=True, frozen=True)
class RequestScope:
    """``priority`` (larger is more urgent, ``runtime.sched_fields``), the ``tenant`` that sent
    the request (the fair policy's unit; its prefix-cache namespace under tenant isolation)
    and its ``cache_salt`` (prefixes are reused only between equal salts).

    Invariant: valid by construction (InvalidRequestError naming the field otherwise), so every
    layer carries it unchanged and none checks it again.
    """

    priority: int | None = None
    tenant: str | None = None
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        check_priority(self.priority)
        check_cache_scope(self.tenant, self.cache_salt)
