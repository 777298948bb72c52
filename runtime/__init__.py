"""Everything that executes a program: the interpreter and its backends (``interp``), the client
of the worker socket (``client``), the HTTP server (``server``), the worker process (``worker``)
and the model it runs (``model``). Names load on first use, so importing this package loads
neither torch nor the engine."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from plait.runtime.client.runtime import Runtime
    from plait.runtime.engine import Engine

__all__ = ["Engine", "InvalidRequestError", "Runtime", "SamplingParams", "WorkerDiedError"]

_LAZY = {"Engine": "plait.runtime.engine", "Runtime": "plait.runtime.client.runtime"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
