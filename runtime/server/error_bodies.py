"""How an error reaches an HTTP client: the OpenAI-style error body (message, type, the field
it names, the status) and the retry headers of an overload or a dead worker. No web framework
here: the auth middleware, which runs before the app is imported, uses it too."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from plait.runtime.errors import (
    InvalidRequestError,
    OverloadedError,
    RequestTooLargeError,
    WorkerDiedError,
)

log = logging.getLogger("plait.server")


def error_body(message: str, param: str | None, status: int, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def exception_body(e: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI-style error body of an exception. Messages name the field and the
    limit; internals (tracebacks, socket paths, exception reprs) go to the server log only."""
    if isinstance(e, RequestTooLargeError):
        return 413, error_body(e.message, e.field, 413, "invalid_request_error")
    if isinstance(e, InvalidRequestError):
        return 400, error_body(e.message, e.field, 400, "invalid_request_error")
    if isinstance(e, OverloadedError):
        return 429, error_body(str(e), None, 429, "rate_limit_error")
    if isinstance(e, WorkerDiedError):
        return 503, error_body(f"the model worker is unavailable: {e}", None, 503, "server_error")
    if isinstance(e, TimeoutError):
        return 504, error_body(f"timed out: {e}", None, 504, "server_error")
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=e)
    message = f"internal error (incident {incident}; details in the server log)"
    return 500, error_body(message, None, 500, "server_error")


def exception_headers(e: BaseException) -> dict[str, str]:
    if isinstance(e, OverloadedError):
        return {"Retry-After": str(max(1, round(e.retry_after)))}
    if isinstance(e, WorkerDiedError):
        return {"Retry-After": "1"}
    return {}
