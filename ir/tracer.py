"""Tracing: run a program on a recording state to get its IR graph without a model.

Arguments not given become ``Argument`` placeholders and ``s["x"]`` becomes a ``Variable``;
using either as data (an f-string, a comparison, ``len``), or reading ``s.text()``, raises
``StopTracing`` and the trace ends there, keeping every node recorded before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from plait.ir.nodes import (
    Argument,
    Fork,
    Gen,
    GetForkItem,
    Join,
    Node,
    NodeList,
    Select,
    StopTracing,
    Variable,
    VarScopeEnd,
    to_node,
)
from plait.ir.printer import format_graph
from plait.ir.role_scopes import RoleScopes


@dataclass(slots=True)
class ProgramGraph:
    """The nodes of the program's main state in order; a ``Fork`` holds its branches' nodes.
    ``stopped`` says why tracing ended early (``None``: the program ran to its end)."""

    name: str
    nodes: list[Node] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None

    def walk(self) -> Iterator[Node]:
        """Every node depth-first: a fork's branches follow the fork, branch by branch."""
        yield from _walk(self.nodes)

    def of_type(self, *types: type) -> list[Node]:
        return [n for n in self.walk() if isinstance(n, types)]

    def __str__(self) -> str:
        return format_graph(self)


def _walk(nodes: list[Node]) -> Iterator[Node]:
    for n in nodes:
        yield n
        if isinstance(n, Fork):
            for branch in n.branches:
                yield from _walk(branch)


class TracerProgramState(RoleScopes):
    """Records what a program appends; reading generated values stops the trace."""

    def __init__(self, nodes: list[Node], arguments: dict[str, Any]) -> None:
        self.nodes = nodes
        self.arguments = arguments
        self._setters: dict[str, Node] = {}
        self.ret_value: Any = None

    def __iadd__(self, other: Any) -> TracerProgramState:
        node = to_node(other)
        for n in node.nodes if isinstance(node, NodeList) else [node]:
            self.nodes.append(n)
            if isinstance(n, (Gen, Select, VarScopeEnd)) and n.name is not None:
                self._setters[n.name] = n
        return self

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> TracerForkGroup:
        node = Fork(size)
        self.nodes.append(node)
        states = []
        for i in range(size):
            node.branches[i].append(GetForkItem(node, i))
            child = TracerProgramState(node.branches[i], self.arguments)
            child._setters = dict(self._setters)
            states.append(child)
        return TracerForkGroup(node, states, self)

    def __getitem__(self, name: str) -> Variable:
        return Variable(name, self._setters.get(name))

    def get_var(self, name: str) -> Variable:
        return self[name]

    def set_var(self, name: str, value: Any) -> None:
        raise StopTracing("set_var depends on run-time values")

    def _stop(self, *_: Any, **__: Any) -> Any:
        raise StopTracing("the program reads its generated text")

    text = messages = get_meta_info = text_iter = _stop

    def sync(self) -> None:
        pass


class TracerForkGroup:
    def __init__(
        self, node: Fork, states: list[TracerProgramState], src: TracerProgramState
    ) -> None:
        self.node = node
        self.states = states
        self.src = src

    def __getitem__(self, i: int) -> TracerProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: TracerProgramState) -> None:
        pass

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[TracerProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> TracerForkGroup:
        for i, s in enumerate(self.states):
            if callable(other) and not isinstance(other, Node):
                s += other(i)
            elif isinstance(other, (list, tuple)):
                s += other[i]
            else:
                s += other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        self.src.nodes.append(Join(self.node, mode))
        if mode == "gather_variable":
            for s in self.states:
                for k, v in s._setters.items():
                    self.src._setters.setdefault(k, v)


def trace_program(
    func: Callable[..., Any], name: str, arg_names: list[str], arguments: dict[str, Any]
) -> ProgramGraph:
    """Runs ``func`` on a tracer; ``arguments`` fills the names it has, the rest are
    placeholders. Data-dependent control flow ends the trace cleanly (``graph.stopped``)."""
    args = {a: arguments.get(a, Argument(a)) for a in arg_names}
    graph = ProgramGraph(name, arguments=args)
    state = TracerProgramState(graph.nodes, args)
    try:
        state.ret_value = func(state, **args)
    except StopTracing as e:
        graph.stopped = str(e)
    except (TypeError, AttributeError) as e:  # a placeholder used where a real value must be
        graph.stopped = f"{type(e).__name__}: {e}"
    return graph
