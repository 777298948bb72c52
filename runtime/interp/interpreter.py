"""The interpreter: executes one program state's IR nodes on that state's own thread.

The program's Python runs on the caller's thread and only *submits* nodes; a ``StreamExecutor``
runs them in order on its worker thread, so independent states (forks, run_batch) generate
concurrently and the worker batches their requests. Reading a variable waits for the node
that sets it, which is what lets Python control flow branch on generated values.

Invariants: nodes run in submission order; ``text``, ``variables`` and ``messages`` change
only on the worker thread, under ``cond``; after a node fails no later node runs, every waiter
wakes, and ``sync`` / ``get_var`` raise that error (its own type), with a note naming the node
and the program line that added it.
"""

from __future__ import annotations

import linecache
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any

from plait.constrained.typed import dtype_to_regex
from plait.ir.nodes import (
    CommitLazy,
    ConcateAndAppend,
    ConstantText,
    Gen,
    Image,
    Node,
    NodeList,
    RoleBegin,
    RoleEnd,
    Select,
    SeparateReasoning,
    VarScopeBegin,
    VarScopeEnd,
    Video,
)
from plait.ir.sampling import GenParams
from plait.lang.reasoning import markers_for, split_reasoning
from plait.runtime.interp.backend import Backend
from plait.runtime.interp.speculation import Speculation

_END = object()
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PKG_DIRS = tuple(os.path.join(_PKG_ROOT, d) + os.sep for d in ("lang", "runtime", "ir"))


@dataclass(slots=True)
class GenSpan:
    """Where a generated value sits in the text (for the notebook view)."""

    start: int
    end: int
    name: str | None
    token_logprobs: list[tuple] | None = None


class StreamExecutor:
    """Runs the nodes of one ProgramState. ``default_params`` are ``run``'s sampling defaults
    (a gen's own fields win); ``stream`` makes gens stream so ``text_iter`` sees tokens."""

    def __init__(
        self,
        backend: Backend,
        arguments: dict[str, Any],
        default_params: GenParams,
        stream: bool = False,
        num_api_spec_tokens: int | None = None,
    ) -> None:
        self.backend = backend
        self.speculation = (
            Speculation(backend, num_api_spec_tokens) if num_api_spec_tokens else None
        )
        self.arguments = arguments
        self.default_params = default_params
        self.stream = stream
        self.text = ""
        self.messages: list[dict[str, str]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, dict[str, Any]] = {}
        self.spans: list[GenSpan] = []
        self.role_spans: list[tuple[int, int, str]] = []  # chat-template text: start, end, role
        self.cur_role: str | None = None
        self.cur_role_begin = 0
        self.fork_start = 0
        self.finished = False
        self.error: BaseException | None = None
        # run(stream=True): the program's body runs on its own thread; readers on other
        # threads wait for it to finish submitting before they sync
        self.program_done: threading.Event | None = None
        self.program_thread: int | None = None
        self.cond = threading.Condition()
        self._var_done: dict[str, threading.Event] = {}
        self._scope_start: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="plait-executor")
        self._thread.start()

    # ---- caller side ----------------------------------------------------------------------

    def submit(self, node: Node) -> None:
        for name in _names_set_by(node):
            self._event(name).clear()
        self._queue.put((node, _program_line()))

    def sync(self) -> None:
        """Waits until every submitted node has run; raises the program's error if one failed."""
        self._wait_program()
        self._queue.join()
        self.raise_error()

    def _wait_program(self) -> None:
        if self.program_done is not None and threading.get_ident() != self.program_thread:
            self.program_done.wait()

    def end(self) -> None:
        """No more nodes: the worker thread exits once the queue drains."""
        self._queue.put(_END)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def get_var(self, name: str) -> Any:
        """The variable's value once the node that sets it has run (KeyError if no submitted
        node sets it)."""
        event = self._var_done.get(name)
        if event is None and name not in self.variables:
            self._wait_program()
            event = self._var_done.get(name)
            if event is None and name not in self.variables:
                self.raise_error()
                raise KeyError(f"the program sets no variable {name!r}")
        if event is not None:
            event.wait()
        self.raise_error()
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        with self.cond:
            self.variables[name] = value
            self._event(name).set()
            self.cond.notify_all()

    def var_done(self, name: str) -> bool:
        return self._event(name).is_set()

    def fork(self, n: int) -> list[StreamExecutor]:
        """n executors continuing from this one's state (call after ``sync``)."""
        out = []
        for _ in range(n):
            e = StreamExecutor(self.backend, self.arguments, self.default_params, self.stream)
            e.text = self.text
            e.messages = list(self.messages)
            e.variables = dict(self.variables)
            e.meta_info = dict(self.meta_info)
            e.spans = list(self.spans)
            e.role_spans = list(self.role_spans)
            e.cur_role, e.cur_role_begin = self.cur_role, self.cur_role_begin
            e.fork_start = len(self.text)
            for name in self.variables:
                e._event(name).set()
            out.append(e)
        return out

    # ---- worker thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            node = item if item is _END else item[0]
            try:
                if node is _END:
                    return
                if self.error is None:
                    self.execute(node)
            except BaseException as e:  # noqa: BLE001 - surfaced on sync / get_var
                _note(e, node, item[1])
                self.error = e
            finally:
                if node is _END:
                    with self.cond:
                        self.finished = True
                        self.cond.notify_all()
                    for ev in list(self._var_done.values()):
                        ev.set()
                elif self.error is not None:
                    with self.cond:
                        self.cond.notify_all()
                    for ev in list(self._var_done.values()):
                        ev.set()
                self._queue.task_done()

    def execute(self, node: Node) -> None:
        if isinstance(node, NodeList):
            for n in node.nodes:
                self.execute(n)
        elif isinstance(node, ConstantText):
            self._fill(node.value)
        elif isinstance(node, str):
            self._fill(node)
        elif isinstance(node, Gen):
            self._gen(node)
        elif isinstance(node, Select):
            self._select(node)
        elif isinstance(node, RoleBegin) and not isinstance(node, RoleEnd):
            self._role_begin(node.role)
        elif isinstance(node, RoleEnd):
            self._role_end(node.role)
        elif isinstance(node, VarScopeBegin) and not isinstance(node, VarScopeEnd):
            self._scope_start[node.name] = len(self.text)
        elif isinstance(node, VarScopeEnd):
            self.set_var(node.name, self.text[self._scope_start.pop(node.name) :])
        elif isinstance(node, SeparateReasoning):
            self._separate_reasoning(node)
        elif isinstance(node, CommitLazy):
            self.backend.cache_prefix(self.text)
        elif isinstance(node, ConcateAndAppend):
            self._concate_and_append(node)
        elif isinstance(node, (Image, Video)):
            raise NotImplementedError(
                f"{type(node).__name__.lower()} input is not supported by this model "
                "(plait serves text-only models)"
            )
        else:
            raise TypeError(f"the interpreter cannot execute {node!r}")

    def _fill(self, text: str, generated: bool = False) -> None:
        if self.speculation is not None and not generated:
            self.speculation.fill(text)
        with self.cond:
            self.text += text
            self.cond.notify_all()

    def _fill_marker(self, text: str, role: str) -> None:
        self.role_spans.append((len(self.text), len(self.text) + len(text), role))
        self._fill(text)

    def _gen(self, node: Gen) -> None:
        params = node.params.merge(self.default_params)
        if node.dtype is not None:
            typed = dtype_to_regex(node.dtype)
            params.regex = params.regex or typed.regex
            params.stop = [*(params.stop or []), *typed.stop]
        if isinstance(params.stop, str):
            params.stop = [params.stop]
        start = len(self.text)
        name = node.name
        meta: dict[str, Any] = {}
        if self.stream:
            if name is not None:
                with self.cond:
                    self.variables[name] = ""
                    self.meta_info[name] = meta
            for delta, meta in self.backend.generate_stream_meta(self.text, params):
                with self.cond:  # text and meta_info change together: readers pair them
                    self.text += delta
                    if name is not None:
                        self.variables[name] += delta
                        self.meta_info[name] = meta
                    self.cond.notify_all()
            value = self.text[start:]
        elif (
            params.n or 1
        ) > 1:  # SGLang: the variable is the list, the text goes on with the first
            results = self.backend.generate_n(self.text, params)
            for r in results:
                self.backend.token_usage.add(r.meta_info)
            self._fill(results[0].text, generated=True)
            if name is not None:
                self.meta_info[name] = results[0].meta_info
                self.set_var(name, [r.text for r in results])
            self.spans.append(GenSpan(start, len(self.text), name))
            return
        elif self.speculation is not None:
            value, meta = self.speculation.gen(self.text, params)
            self._fill(value, generated=True)
        else:
            result = self.backend.generate(self.text, params)
            value, meta = result.text, result.meta_info
            self._fill(value, generated=True)
        self.backend.token_usage.add(meta)
        self.spans.append(GenSpan(start, len(self.text), name, meta.get("output_token_logprobs")))
        if name is not None:
            self.meta_info[name] = meta
            self.set_var(name, value)

    def _select(self, node: Select) -> None:
        result = self.backend.select(
            self.text, list(node.choices), node.temperature, node.choices_method
        )
        start = len(self.text)
        self._fill(result.decision)
        self.spans.append(GenSpan(start, len(self.text), node.name))
        if node.name is not None:
            self.meta_info[node.name] = result.meta_info
            self.set_var(node.name, result.decision)

    def _role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"role {role!r} begins inside role {self.cur_role!r}; roles nest")
        if not self.messages and role != "system":
            default = self.backend.default_system_prompt
            if default:
                self._role_begin("system")
                self._fill(default)
                self._role_end("system")
        self.cur_role = role
        self._fill_marker(self.backend.role_markers(role).prefix, role)
        self.cur_role_begin = len(self.text)

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"role {role!r} ends but the open role is {self.cur_role!r}")
        content = self.text[self.cur_role_begin :].lstrip()
        self._fill_marker(self.backend.role_markers(role).suffix, role)
        with self.cond:
            self.messages.append({"role": role, "content": content})
        self.cur_role = None

    def _separate_reasoning(self, node: SeparateReasoning) -> None:
        markers = markers_for(node.model_type)
        for name in node.names:
            value = self.variables[name]
            reasoning, answer = split_reasoning(value, markers)
            with self.cond:
                if self.cur_role is not None:  # SGLang: the open message keeps the answer only
                    self.text = self.text[: self.cur_role_begin] + answer
                elif self.text.endswith(value):
                    self.text = self.text[: len(self.text) - len(value)] + answer
            self.set_var(name, answer)
            self.set_var(reasoning_name(name), reasoning)

    def _concate_and_append(self, node: ConcateAndAppend) -> None:
        pieces = []
        for executor in node.states:
            executor.sync()
            pieces.append(executor.text[executor.fork_start :])
        self._fill("".join(pieces))

    def _event(self, name: str) -> threading.Event:
        ev = self._var_done.get(name)
        if ev is None:
            ev = self._var_done.setdefault(name, threading.Event())
        return ev


def _names_set_by(node: Node) -> list[str]:
    if isinstance(node, NodeList):
        return [n for child in node.nodes for n in _names_set_by(child)]
    if isinstance(node, (Gen, Select)) and node.name is not None:
        return [node.name]
    if isinstance(node, VarScopeEnd):
        return [node.name]
    if isinstance(node, SeparateReasoning):
        return [reasoning_name(n) for n in node.names]
    return []


def reasoning_name(name: str) -> str:
    return f"{name}_reasoning_content"


def _program_line() -> tuple[str, int, str] | None:
    """The innermost frame outside plait's frontend and interpreter: the program's line."""
    try:
        frame = sys._getframe(2)
    except ValueError:
        return None
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PKG_DIRS) or "contextlib" in frame.f_code.co_filename
    ):
        frame = frame.f_back
    if frame is None:
        return None
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _note(error: BaseException, node: Any, where: tuple[str, int, str] | None) -> None:
    if not hasattr(error, "add_note"):
        return
    error.add_note(f"while executing {node!r}")
    if where is not None:
        filename, lineno, func = where
        line = linecache.getline(filename, lineno).strip()
        error.add_note(f'  added by File "{filename}", line {lineno}, in {func}\n    {line}')
