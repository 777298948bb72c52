"""A readable listing of a traced program graph."""

from __future__ import annotations

from plait.ir.nodes import ConstantText, Fork, Node

_MAX_TEXT = 60


def format_graph(graph) -> str:
    """One line per node, fork branches indented under their fork."""
    lines = [f"program {graph.name}({', '.join(graph.arguments)})"]
    _format(graph.nodes, 1, lines)
    if graph.stopped is not None:
        lines.append(f"  <tracing stopped: {graph.stopped}>")
    return "\n".join(lines)


def _format(nodes: list[Node], depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for n in nodes:
        lines.append(f"{pad}%{n.node_id} = {_describe(n)}")
        if isinstance(n, Fork):
            for i, branch in enumerate(n.branches):
                lines.append(f"{pad}  branch {i}:")
                _format(branch, depth + 2, lines)


def _describe(n: Node) -> str:
    if isinstance(n, ConstantText):
        text = n.value if len(n.value) <= _MAX_TEXT else n.value[: _MAX_TEXT - 3] + "..."
        return f"ConstantText({text!r})"
    return repr(n)
