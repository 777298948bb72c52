"""What the server admits at once: sequences per request, sequences and prompt tokens in flight.

A request past a per-request limit is a 400 naming it; a request that would push the server past
what it holds in flight is a 429 with ``Retry-After`` (the client may come back), decided before
anything reaches the worker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from plait.runtime.errors import InvalidRequestError, OverloadedError

RETRY_AFTER_S = 1.0


@dataclass(slots=True, frozen=True)
class HttpLimits:
    """The server's input limits (``ServerArgs``): body bytes, JSON nesting, fan-out, load."""

    max_request_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 32
    max_sequences_per_request: int = 64
    max_concurrent_sequences: int = 1024
    max_queued_tokens: int = 1_000_000
    request_timeout: float | None = 600.0


class AdmissionGate:
    """Counts the sequences in flight and their prompt tokens; thread-safe.

    Invariant: every admitted sequence is released exactly once (its handle's done callback),
    so the counts return to zero when the server is idle.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self.sequences = 0
        self.tokens = 0
        self.rejected = 0

    def check_fan_out(self, sequences: int) -> None:
        cap = self.limits.max_sequences_per_request
        if sequences > cap:
            raise InvalidRequestError(
                "n", f"prompts x n = {sequences} sequences exceed the limit of {cap} per request"
            )

    def admit(self, sequences: int, tokens: int) -> None:
        """Reserves room for a request or raises OverloadedError (nothing reserved)."""
        lim = self.limits
        with self._lock:
            if self.sequences and (
                self.sequences + sequences > lim.max_concurrent_sequences
                or self.tokens + tokens > lim.max_queued_tokens
            ):
                self.rejected += 1
                raise OverloadedError(
                    f"the server is at capacity ({self.sequences} sequences, {self.tokens} prompt "
                    "tokens in flight); retry later",
                    RETRY_AFTER_S,
                )
            self.sequences += sequences
            self.tokens += tokens

    def release(self, sequences: int, tokens: int) -> None:
        with self._lock:
            self.sequences -= sequences
            self.tokens -= tokens
            assert self.sequences >= 0 and self.tokens >= 0, "released more than admitted"
