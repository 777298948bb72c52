"""plait: an embedded language for programming language models, and the runtime that runs it fast."""

from plait.lang.api import (
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    global_config,
    image,
    select,
    separate_reasoning,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from plait.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from plait.lang.function import SglFunction, function
from plait.lang.state import ProgramState, ProgramStateGroup
from plait.runtime.client.runtime import Runtime
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.interp.endpoint import RuntimeEndpoint
from plait.runtime.interp.openai_backend import OpenAI
from plait.runtime.sampling_params import SamplingParams

__version__ = "0.1.0"

# SGLang's runtime names, loaded on first use (the frontend stays torch-free)
_LAZY = {"Engine": "plait.runtime.engine", "ServerArgs": "plait.runtime.config"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Engine",
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "InvalidRequestError",
    "OpenAI",
    "ProgramState",
    "ProgramStateGroup",
    "Runtime",
    "RuntimeEndpoint",
    "SamplingParams",
    "ServerArgs",
    "SglFunction",
    "WorkerDiedError",
    "__version__",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]
