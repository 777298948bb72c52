"""``@function`` programs: run, run_batch, bind, trace."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from plait.ir.nodes import ConstantText, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd
from plait.ir.sampling import GenParams
from plait.ir.tracer import ProgramGraph, trace_program
from plait.lang.api import _default, as_backend, global_config
from plait.lang.state import ProgramState
from plait.runtime.interp.backend import Backend
from plait.runtime.interp.interpreter import StreamExecutor
from plait.runtime.sched_fields import check_priority, check_tenant

_PREFIX_NODES = (ConstantText, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd)


def function(func: Callable[..., Any] | None = None, num_api_spec_tokens: int | None = None) -> Any:
    """``@function`` or ``@function(num_api_spec_tokens=N)``: with N, SGLang's API speculative
    execution (``runtime.interp.speculation``): a gen asks for N tokens at once and the gens
    and text after it are matched against them before another request is sent."""
    if func is None:
        return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)
    return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)


class SglFunction:
    """A program: a Python function whose first parameter is the state ``s``."""

    def __init__(
        self,
        func: Callable[..., Any],
        num_api_spec_tokens: int | None = None,
        bind_arguments: dict[str, Any] | None = None,
    ) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"{func.__name__}: a program's first parameter must be the state s")
        self.arg_names = [p.name for p in params[1:]]
        self._defaults = {
            p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty
        }
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> SglFunction:
        """A copy with some arguments fixed."""
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.__name__}() has no argument(s) {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(
        self,
        *args: Any,
        max_new_tokens: int = 128,
        n: int = 1,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        stop_regex: str | list[str] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        ignore_eos: bool = False,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
        priority: int | None = None,
        tenant: str | None = None,
        stream: bool = False,
        backend: Any = None,
        use_thread: bool = True,
        **kwargs: Any,
    ) -> ProgramState:
        """Runs the program; returns its state once it has finished (with ``stream``, at
        once: read it with ``text_iter``). A failing node raises here, with its own type."""
        defaults = _sampling_defaults(locals())
        arguments = self._arguments(args, kwargs)
        return _run_program(self, self._backend(backend), arguments, defaults, stream)

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any]],
        *,
        max_new_tokens: int = 128,
        n: int = 1,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        stop_regex: str | list[str] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        ignore_eos: bool = False,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
        priority: int | None = None,
        tenant: str | None = None,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
    ) -> list[ProgramState]:
        """Runs the program once per kwargs dict, ``num_threads`` at a time, and returns the
        states in input order. With more than one input the traced constant prefix is first
        computed into the prefix cache."""
        if generator_style:
            raise NotImplementedError("run_batch(generator_style=True) is not supported")
        if not isinstance(batch_kwargs, list) or not all(isinstance(k, dict) for k in batch_kwargs):
            raise TypeError("run_batch takes a list of dicts of keyword arguments")
        if not batch_kwargs:
            return []
        defaults = _sampling_defaults(locals())
        be = self._backend(backend)
        argument_sets = [self._arguments((), kw) for kw in batch_kwargs]
        if len(batch_kwargs) > 1 and global_config.enable_precache_with_tracing:
            prefix = self.constant_prefix(be)
            if len(prefix) >= global_config.precache_min_chars:
                be.cache_prefix(prefix)
        if num_threads == "auto":
            num_threads = max(96, (os.cpu_count() or 1) * 16)
        num_threads = max(1, min(int(num_threads), len(batch_kwargs)))
        bar = _progress(len(batch_kwargs)) if progress_bar else None

        def one(arguments: dict[str, Any]) -> ProgramState:
            try:
                return _run_program(self, be, arguments, defaults, stream=False)
            finally:
                if bar is not None:
                    bar.update(1)

        try:
            if num_threads == 1:
                return [one(a) for a in argument_sets]
            with ThreadPoolExecutor(num_threads) as pool:
                return list(pool.map(one, argument_sets))
        finally:
            if bar is not None:
                bar.close()

    def trace(self, *, backend: Any = None, **kwargs: Any) -> ProgramGraph:
        """The program's IR graph; arguments not given are placeholders."""
        return trace_program(
            self.func, self.__name__, self.arg_names, {**self.bind_arguments, **kwargs}
        )

    def constant_prefix(self, backend: Any = None) -> str:
        """The text every run starts with: the traced nodes up to the first one that depends
        on an argument or the model (roles rendered with ``backend``'s chat template)."""
        nodes = []
        for n in trace_program(self.func, self.__name__, self.arg_names, self.bind_arguments).nodes:
            if not isinstance(n, _PREFIX_NODES):
                break
            nodes.append(n)
        if not nodes:
            return ""
        executor = StreamExecutor(self._backend(backend), {}, GenParams())
        try:
            for n in nodes:
                executor.execute(n)
        except Exception:  # noqa: BLE001 - an unbalanced role in the prefix: keep what rendered
            pass
        finally:
            executor.end()
        return executor.text

    def cache(self, backend: Any = None) -> None:
        """Computes the constant prefix into the backend's prefix cache."""
        be = self._backend(backend)
        prefix = self.constant_prefix(be)
        if prefix:
            be.cache_prefix(prefix)

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)

    # ---- helpers --------------------------------------------------------------------------

    def _backend(self, backend: Any) -> Backend:
        return as_backend(backend) if backend is not None else _default()

    def _arguments(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        free = [a for a in self.arg_names if a not in self.bind_arguments]
        if len(args) > len(free):
            raise TypeError(f"{self.__name__}() takes {len(free)} arguments, got {len(args)}")
        out = {**self._defaults, **self.bind_arguments, **dict(zip(free, args))}
        for k, v in kwargs.items():
            if k not in self.arg_names:
                raise TypeError(f"{self.__name__}() got an unexpected argument {k!r}")
            out[k] = v
        missing = [a for a in self.arg_names if a not in out]
        if missing:
            raise TypeError(f"{self.__name__}() missing argument(s) {missing}")
        return out


def _run_program(
    program: SglFunction,
    backend: Backend,
    arguments: dict[str, Any],
    defaults: GenParams,
    stream: bool,
) -> ProgramState:
    executor = StreamExecutor(
        backend, arguments, defaults, stream=stream, num_api_spec_tokens=program.num_api_spec_tokens
    )
    state = ProgramState(executor)

    def body() -> None:
        executor.program_thread = threading.get_ident()
        try:
            state.ret_value = program.func(state, **arguments)
        except BaseException as e:  # noqa: BLE001 - a streaming reader sees it on text_iter
            if executor.error is None:
                executor.error = e
            raise
        finally:
            executor.end()
            if executor.program_done is not None:
                executor.program_done.set()

    if stream:
        executor.program_done = threading.Event()
        threading.Thread(target=_swallow(body), daemon=True, name="plait-program").start()
        return state
    body()
    state.sync()
    return state


def _swallow(fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - recorded on the executor by body()
            pass

    return run


def _sampling_defaults(args: dict[str, Any]) -> GenParams:
    stop, stop_regex = args["stop"], args["stop_regex"]
    return GenParams(
        max_new_tokens=args["max_new_tokens"],
        n=args["n"],
        stop=[stop] if isinstance(stop, str) else stop,
        stop_token_ids=args["stop_token_ids"],
        stop_regex=[stop_regex] if isinstance(stop_regex, str) else stop_regex,
        temperature=args["temperature"],
        top_p=args["top_p"],
        top_k=args["top_k"],
        min_p=args["min_p"],
        frequency_penalty=args["frequency_penalty"],
        presence_penalty=args["presence_penalty"],
        ignore_eos=args["ignore_eos"],
        return_logprob=args["return_logprob"],
        logprob_start_len=args["logprob_start_len"],
        top_logprobs_num=args["top_logprobs_num"],
        priority=check_priority(args["priority"]),
        tenant=check_tenant(args["tenant"]),
    )


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total)
