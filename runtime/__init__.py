"""Everything that executes: the engine, scheduler, model runner, sampler and models."""

from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.local_runtime import Runtime
from plait.runtime.sampling_params import SamplingParams

__all__ = ["Engine", "InvalidRequestError", "Runtime", "SamplingParams", "WorkerDiedError"]
