"""The exception types raised at plait's boundaries (public API, socket, HTTP)."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request argument is out of range or malformed.

    Invariant: ``field`` names the offending argument as the caller spelled it, and the message
    states the limit it broke, so a 400 response can be built from it directly.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelNotFoundError(FileNotFoundError):
    """The model path or the package carrying the default model is not installed."""


class WorkerDiedError(RuntimeError):
    """The worker process exited or stopped answering; every request it held has failed."""


class RequestTooLargeError(InvalidRequestError):
    """A request body is larger than the server accepts (HTTP 413); read no further."""


class OverloadedError(RuntimeError):
    """The server holds as much work as it admits; retry after ``retry_after`` seconds (429)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
