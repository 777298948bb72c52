"""plait: an embedded language for programming language models, and the runtime that runs it fast."""

from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.local_runtime import Runtime
from plait.runtime.sampling_params import SamplingParams

__version__ = "0.1.0"

__all__ = ["InvalidRequestError", "Runtime", "SamplingParams", "WorkerDiedError", "__version__"]
