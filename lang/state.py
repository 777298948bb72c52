"""``ProgramState`` (the ``s`` of a program) and the group ``s.fork(n)`` returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from plait.ir.nodes import (
    CommitLazy,
    ConcateAndAppend,
    Node,
    to_node,
)
from plait.ir.role_scopes import RoleScopes
from plait.lang.html import state_to_html
from plait.runtime.interp.interpreter import StreamExecutor

JOIN_MODES = ("gather_variable", "concate_and_append")
_DONE = object()


class ProgramState(RoleScopes):
    """What a program appends to. ``s += x`` submits ``x`` and returns at once; reading
    (``s["name"]``, ``s.text()``, ``s.messages()``) waits for the nodes it depends on."""

    def __init__(self, executor: StreamExecutor) -> None:
        self.stream_executor = executor
        self.ret_value: Any = None

    # ---- appending ------------------------------------------------------------------------

    def __iadd__(self, other: Any) -> ProgramState:
        self.stream_executor.submit(to_node(other))
        return self

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        """``size`` states continuing from this one. The shared text is first computed into the
        prefix cache, so every branch's first request hits it."""
        if size < 1:
            raise ValueError(f"fork size must be >= 1, got {size}")
        ex = self.stream_executor
        if size > 1:
            ex.submit(CommitLazy())
        ex.sync()
        return ProgramStateGroup([ProgramState(e) for e in ex.fork(size)], self)

    # ---- reading --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def get_var(self, name: str) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.sync()
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> dict[str, Any]:
        """The server's meta_info of the gen / select that set ``name`` (streamed: the last
        chunk's, whose token counts and logprob lists cover the whole output)."""
        self.get_var(name)
        return self.stream_executor.meta_info.get(name, {})

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[ProgramState]:
        """``with s.copy() as c:`` a one-branch fork, joined (variables gathered) on exit."""
        group = self.fork(1, position_ids_offset)
        try:
            yield group[0]
        finally:
            group.join()

    def text(self) -> str:
        self.sync()
        return self.stream_executor.text

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        return list(self.stream_executor.messages)

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        return self.stream_executor.error

    @property
    def arguments(self) -> dict[str, Any]:
        return self.stream_executor.arguments

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Text as it is generated (``run(stream=True)``): the whole text, or one variable's.
        The chunks join to ``text()`` / ``s[var_name]``. Without streaming, one chunk."""
        for chunk, _ in self._chunks(var_name):
            yield chunk

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """``text_iter`` for asyncio. With ``return_meta_data`` (and ``var_name``) each item is
        ``(chunk, meta_info)`` as SGLang yields it: the output logprob lists hold only the
        entries since the previous item; ``completion_tokens`` and
        ``output_token_logprobs_length`` count the whole output so far."""
        loop = asyncio.get_running_loop()
        chunks = self._chunks(var_name)
        sent_logprobs = 0
        while True:
            item = await loop.run_in_executor(None, next, chunks, _DONE)
            if item is _DONE:
                return
            chunk, meta = item
            if not return_meta_data:
                yield chunk
                continue
            meta = dict(meta)
            lps = meta.get("output_token_logprobs")
            if lps is not None:
                meta["output_token_logprobs_length"] = len(lps)
                for key in ("output_token_logprobs", "output_top_logprobs"):
                    if key in meta:
                        meta[key] = meta[key][sent_logprobs:]
                sent_logprobs = len(lps)
            yield chunk, meta

    def _chunks(self, var_name: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """``text_iter``'s chunks, each with the variable's meta_info as of that chunk."""
        ex = self.stream_executor
        if not ex.stream:
            value = self.text() if var_name is None else self.get_var(var_name)
            yield value, self._meta_now(var_name)
            return
        sent = 0
        while True:
            with ex.cond:
                ex.cond.wait_for(lambda n=sent: _has_news(ex, var_name, n), timeout=1.0)
                source = ex.text if var_name is None else ex.variables.get(var_name, "")
                chunk = source[sent:]
                meta = self._meta_now(var_name)
                done = ex.error is not None or (
                    ex.finished if var_name is None else _var_finished(ex, var_name)
                )
            if chunk:
                sent += len(chunk)
                yield chunk, meta
            if done:
                ex.raise_error()
                return

    def _meta_now(self, var_name: str | None) -> dict[str, Any]:
        if var_name is None:
            return {}
        return self.stream_executor.meta_info.get(var_name, {})

    # ---- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        ex = self.stream_executor
        text = ex.text if len(ex.text) <= 400 else ex.text[:200] + " ... " + ex.text[-200:]
        names = ", ".join(sorted(ex.variables))
        state = "error" if ex.error is not None else ("running" if not ex.finished else "done")
        return f"ProgramState({state}, variables=[{names}], text={text!r})"

    def _repr_html_(self) -> str:
        self.sync()
        return state_to_html(self.stream_executor)

    def __del__(self) -> None:
        ex = self.__dict__.get("stream_executor")
        if ex is not None and not ex.finished:
            ex.end()


def _has_news(ex: StreamExecutor, var_name: str | None, sent: int) -> bool:
    if ex.error is not None or ex.finished:
        return True
    if var_name is None:
        return len(ex.text) > sent
    return len(ex.variables.get(var_name, "")) > sent or _var_finished(ex, var_name)


def _var_finished(ex: StreamExecutor, name: str) -> bool:
    return ex.finished or (name in ex.variables and ex.var_done(name))


class ProgramStateGroup:
    """The states of one ``fork``. ``forks += x`` appends to each: a callable is called with
    the index, a list gives one item per state."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState) -> None:
        self.states = states
        self.src_state = src_state

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if value is not self.states[i]:
            raise ValueError("a fork's state can only be appended to, not replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Callable[[int], Any] | Node | str | list) -> ProgramStateGroup:
        if callable(other) and not isinstance(other, Node):
            for i, s in enumerate(self.states):
                s += other(i)
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"need one item per fork ({len(self.states)}), got {len(other)}")
            for s, x in zip(self.states, other):
                s += x
        else:
            for s in self.states:
                s += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """``gather_variable``: each variable the forks created becomes a list (one value per
        fork) on the source state. ``concate_and_append``: the text each fork added is appended
        to the source state, fork by fork."""
        if mode not in JOIN_MODES:
            raise ValueError(f"join mode must be one of {JOIN_MODES}, got {mode!r}")
        src = self.src_state.stream_executor
        if mode == "gather_variable":
            before = set(src.variables)
            gathered: dict[str, list[Any]] = {}
            for s in self.states:
                s.sync()
                for k, v in s.stream_executor.variables.items():
                    if k not in before:
                        gathered.setdefault(k, []).append(v)
            for k, values in gathered.items():
                src.set_var(k, values)
        else:
            self.src_state += ConcateAndAppend([s.stream_executor for s in self.states])
            self.src_state.sync()
        for s in self.states:
            s.stream_executor.end()
