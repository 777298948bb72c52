"""IR node types: what ``s += ...`` hands to the interpreter, and what tracing records.

Every node is an immutable description; executing it is the interpreter's job. ``a + b`` (and
``"text" + node``) builds a ``NodeList``. Nodes compare by identity: a traced value used as data
(``if s["x"] == ...``) must stop tracing, never silently compare False.
"""

from __future__ import annotations

import itertools
from typing import Any

from plait.ir.sampling import GenParams

_ids = itertools.count()


class StopTracing(Exception):
    """Raised when a traced program uses a value that only exists at run time."""


class Node:
    """Base of every IR node; ``node_id`` orders nodes by creation."""

    __slots__ = ("node_id",)

    def __init__(self) -> None:
        self.node_id = next(_ids)

    def __add__(self, other: Any) -> NodeList:
        return NodeList([self, to_node(other)])

    def __radd__(self, other: Any) -> NodeList:
        return NodeList([to_node(other), self])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields().items())
        return f"{type(self).__name__}({fields})"

    def _fields(self) -> dict[str, Any]:
        return {}


class ConstantText(Node):
    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    def _fields(self) -> dict[str, Any]:
        return {"value": self.value}


class NodeList(Node):
    """A sequence of nodes executed in order (flattened on construction)."""

    __slots__ = ("nodes",)

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__()
        flat: list[Node] = []
        for n in nodes:
            flat.extend(n.nodes if isinstance(n, NodeList) else [n])
        self.nodes = flat

    def __add__(self, other: Any) -> NodeList:
        return NodeList([*self.nodes, to_node(other)])

    def __radd__(self, other: Any) -> NodeList:
        return NodeList([to_node(other), *self.nodes])

    def _fields(self) -> dict[str, Any]:
        return {"nodes": self.nodes}


class _Opaque(Node):
    """A value known only at run time; using it as data stops tracing."""

    __slots__ = ()

    def _stop(self, *_: Any, **__: Any) -> Any:
        raise StopTracing(f"{self!r} is used as data; its value is only known at run time")

    __str__ = __format__ = __bool__ = __len__ = __iter__ = __contains__ = _stop
    __int__ = __float__ = __index__ = __getitem__ = __lt__ = __gt__ = __le__ = __ge__ = _stop
    __mul__ = __rmul__ = __mod__ = _stop

    def __eq__(self, other: object) -> bool:
        self._stop()
        return False

    def __ne__(self, other: object) -> bool:
        self._stop()
        return True

    __hash__ = Node.__hash__

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._stop()


class Argument(_Opaque):
    """A program argument whose value tracing does not know."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _fields(self) -> dict[str, Any]:
        return {"name": self.name}


class Variable(_Opaque):
    """``s["name"]`` read during tracing: the value of a gen / select / var scope."""

    __slots__ = ("name", "source")

    def __init__(self, name: str, source: Node | None = None) -> None:
        super().__init__()
        self.name = name
        self.source = source

    def _fields(self) -> dict[str, Any]:
        return {"name": self.name}


class Gen(Node):
    """Generate into variable ``name`` (``None``: text only). ``dtype`` is int/float/bool/str
    (or its name) and becomes a regex constraint when executed."""

    __slots__ = ("name", "params", "dtype")

    def __init__(self, name: str | None, params: GenParams, dtype: Any = None) -> None:
        super().__init__()
        self.name = name
        self.params = params
        self.dtype = dtype

    def _fields(self) -> dict[str, Any]:
        set_fields = {k: v for k, v in self.params.to_native().items()}
        out: dict[str, Any] = {"name": self.name, **set_fields, **self.params.request_fields()}
        if self.dtype is not None:
            out["dtype"] = getattr(self.dtype, "__name__", self.dtype)
        return out


class Select(Node):
    __slots__ = ("name", "choices", "temperature", "choices_method")

    def __init__(
        self, name: str | None, choices: list[str], temperature: float, choices_method: Any
    ) -> None:
        super().__init__()
        self.name = name
        self.choices = choices
        self.temperature = temperature
        self.choices_method = choices_method

    def _fields(self) -> dict[str, Any]:
        return {"name": self.name, "choices": self.choices}


class RoleBegin(Node):
    __slots__ = ("role",)

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def _fields(self) -> dict[str, Any]:
        return {"role": self.role}


class RoleEnd(RoleBegin):
    __slots__ = ()


class VarScopeBegin(Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _fields(self) -> dict[str, Any]:
        return {"name": self.name}


class VarScopeEnd(VarScopeBegin):
    __slots__ = ()


class Fork(Node):
    """``s.fork(number)``; ``branches`` holds, after tracing, the nodes each fork received."""

    __slots__ = ("number", "branches")

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.branches: list[list[Node]] = [[] for _ in range(number)]

    def _fields(self) -> dict[str, Any]:
        return {"number": self.number}


class GetForkItem(Node):
    __slots__ = ("fork", "index")

    def __init__(self, fork: Fork, index: int) -> None:
        super().__init__()
        self.fork = fork
        self.index = index

    def _fields(self) -> dict[str, Any]:
        return {"index": self.index}


class Join(Node):
    """``forks.join(mode)``: ``gather_variable`` or ``concate_and_append``."""

    __slots__ = ("fork", "mode")

    def __init__(self, fork: Fork | None, mode: str) -> None:
        super().__init__()
        self.fork = fork
        self.mode = mode

    def _fields(self) -> dict[str, Any]:
        return {"mode": self.mode}


class ConcateAndAppend(Node):
    """Appends the text each fork added since the fork (``join("concate_and_append")``)."""

    __slots__ = ("states",)

    def __init__(self, states: list[Any]) -> None:
        super().__init__()
        self.states = states


class CommitLazy(Node):
    """Computes the text so far into the server's prefix cache (before a fork)."""

    __slots__ = ()


class SeparateReasoning(Node):
    """After the gens / selects named ``names`` ran: split each value's reasoning (the
    model's think markers, per ``model_type``) into ``<name>_reasoning_content``; the value
    and the text keep only the answer."""

    __slots__ = ("model_type", "names")

    def __init__(self, model_type: str | None, names: list[str]) -> None:
        super().__init__()
        self.model_type = model_type
        self.names = names

    def _fields(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "names": self.names}


class Image(Node):
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class Video(Node):
    __slots__ = ("path", "num_frames")

    def __init__(self, path: str, num_frames: int) -> None:
        super().__init__()
        self.path = path
        self.num_frames = num_frames


def to_node(value: Any) -> Node:
    """A node for what a program may add: a node, a string, or a list of either."""
    if isinstance(value, Node):
        return value
    if isinstance(value, str):
        return ConstantText(value)
    if isinstance(value, (list, tuple)):
        return NodeList([to_node(v) for v in value])
    raise TypeError(
        f"cannot add a {type(value).__name__} to a program state; "
        "add a string, gen(...), select(...) or a role"
    )


def flatten(node: Node) -> list[Node]:
    return list(node.nodes) if isinstance(node, NodeList) else [node]
