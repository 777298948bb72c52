"""The primitives a program is written with (SGLang's names and arguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.constrained.typed import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from plait.ir.nodes import (
    Gen,
    Image,
    NodeList,
    RoleBegin,
    RoleEnd,
    Select,
    SeparateReasoning,
    Video,
    to_node,
)
from plait.ir.sampling import GenParams
from plait.lang.choices import ChoicesSamplingMethod, token_length_normalized
from plait.lang.reasoning import markers_for
from plait.runtime.interp.backend import Backend
from plait.runtime.interp.runtime_backend import RuntimeBackend
from plait.runtime.interp.select import check_choices

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "as_backend",
    "flush_cache",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "global_config",
    "image",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "video",
]


@dataclass(slots=True)
class GlobalConfig:
    """Process-wide settings. ``enable_precache_with_tracing``: run_batch traces the program and
    warms the prefix cache with its constant prefix when that is at least
    ``precache_min_chars`` long (SGLang's 64)."""

    default_backend: Any = None  # as passed to set_default_backend (a Runtime stays one)
    enable_precache_with_tracing: bool = True
    precache_min_chars: int = 64
    verbosity: int = 0
    # SGLang's GlobalConfig fields, for programs that set them
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True
    enable_parallel_encoding: bool = True


global_config = GlobalConfig()


def as_backend(backend: Any) -> Backend:
    """A ``Backend`` for what a user passes: a Backend, or a ``plait.Runtime`` (wrapped once)."""
    if isinstance(backend, Backend):
        return backend
    wrapped = RuntimeBackend.of(backend)
    if wrapped is not None:
        return wrapped
    endpoint = getattr(backend, "endpoint", None)  # SGLang's Runtime carries its endpoint
    if isinstance(endpoint, Backend):
        return endpoint
    raise TypeError(
        f"not a backend: {type(backend).__name__}; pass plait.Runtime(), "
        "plait.RuntimeEndpoint(url) or plait.OpenAI(model)"
    )


def set_default_backend(backend: Any) -> None:
    """Makes ``backend`` the default; ``global_config.default_backend`` is that same object
    (SGLang programs read ``.endpoint`` or ``.token_usage`` off it)."""
    as_backend(backend)  # refuses what is not a backend, here rather than at the first gen
    global_config.default_backend = backend


def flush_cache(backend: Any = None) -> bool | None:
    """Drops the prefix cache of ``backend`` (default: the default backend); None when there
    is no backend, as in SGLang."""
    target = backend if backend is not None else global_config.default_backend
    if target is None:
        return None
    as_backend(target).flush_cache()
    return True


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    """The server's (or local runtime's) ``server_info``; None when there is no backend."""
    target = backend if backend is not None else global_config.default_backend
    if target is None:
        return None
    info = getattr(target, "get_server_info", None) or as_backend(target).get_server_info
    return info()


def _default() -> Backend:
    if global_config.default_backend is None:
        raise RuntimeError("no backend: call plait.set_default_backend(plait.Runtime()) first")
    return as_backend(global_config.default_backend)


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    stop_regex: str | list[str] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: Any = None,
    choices: list[str] | None = None,
    choices_method: ChoicesSamplingMethod | None = None,
    regex: str | None = None,
    json_schema: str | None = None,
    ebnf: str | None = None,
    *,
    max_new_tokens: int | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
) -> Gen | Select:
    """Generate into variable ``name``. With ``choices`` it is a ``select``. With ``n`` > 1
    the variable is the list of ``n`` samples and the text goes on with the first (SGLang's
    semantics). ``stop_regex``: stop where the output's tail matches one of these Python
    regexes (cut from the value). ``return_text_in_logprobs`` is accepted and always on."""
    if choices is not None:
        return select(name, choices, temperature or 0.0, choices_method or token_length_normalized)
    if max_tokens is not None and max_new_tokens is not None and max_tokens != max_new_tokens:
        raise ValueError("give max_tokens or max_new_tokens, not both")
    params = GenParams(
        max_new_tokens=max_tokens if max_tokens is not None else max_new_tokens,
        min_new_tokens=min_tokens,
        stop=[stop] if isinstance(stop, str) else (list(stop) if stop is not None else None),
        stop_token_ids=list(stop_token_ids) if stop_token_ids is not None else None,
        stop_regex=[stop_regex] if isinstance(stop_regex, str) else stop_regex,
        n=n,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        repetition_penalty=repetition_penalty,
        ignore_eos=ignore_eos,
        seed=seed,
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num,
        regex=regex,
        json_schema=json_schema,
        ebnf=ebnf,
    )
    return Gen(name, params, dtype)


def gen_int(name: str | None = None, **kwargs: Any) -> Gen:
    return gen(name, dtype=int, **kwargs)  # type: ignore[return-value]


def gen_string(name: str | None = None, **kwargs: Any) -> Gen:
    return gen(name, dtype=str, **kwargs)  # type: ignore[return-value]


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesSamplingMethod = token_length_normalized,
) -> Select:
    """Append the choice the model scores highest (``choices_method``); with ``temperature``
    above 0, sample a choice from the softmax of the mean logprobs instead."""
    return Select(name, check_choices(choices), temperature, choices_method)


def _role(role: str, expr: Any = None) -> NodeList:
    inner = [] if expr is None else [to_node(expr)]
    return NodeList([RoleBegin(role), *inner, RoleEnd(role)])


def system(expr: Any = None) -> NodeList:
    return _role("system", expr)


def user(expr: Any = None) -> NodeList:
    return _role("user", expr)


def assistant(expr: Any = None) -> NodeList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


def separate_reasoning(expr: Any = None, model_type: str | None = None) -> NodeList:
    """``expr`` (gens / selects with names), then its reasoning split off: each value keeps
    the answer and ``<name>_reasoning_content`` gets the thinking (``model_type`` picks the
    markers, as SGLang's reasoning parsers do; None: ``<think>`` ... ``</think>``)."""
    markers_for(model_type)  # an unknown model type fails where the program names it
    node = to_node(expr) if expr is not None else NodeList([])
    names = [n.name for n in _flat(node) if isinstance(n, (Gen, Select)) and n.name]
    return NodeList([node, SeparateReasoning(model_type, names)])


def _flat(node: Any) -> list[Any]:
    if isinstance(node, NodeList):
        return [x for child in node.nodes for x in _flat(child)]
    return [node]


def image(path: str) -> Image:
    raise NotImplementedError("image input is not supported by this model (text-only)")


def video(path: str, num_frames: int) -> Video:
    raise NotImplementedError("video input is not supported by this model (text-only)")
