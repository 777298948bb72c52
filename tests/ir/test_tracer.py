"""Tracing programs to IR graphs, without a model."""

from __future__ import annotations

import plait as sgl
from plait.ir.nodes import (
    Argument,
    ConstantText,
    Fork,
    Gen,
    GetForkItem,
    Join,
    NodeList,
    RoleBegin,
    RoleEnd,
    Select,
    Variable,
    VarScopeBegin,
    VarScopeEnd,
)


def test_adding_nodes_and_strings_builds_a_flat_list():
    expr = "Q: " + sgl.gen("a") + "\n" + (sgl.select("b", choices=["x"]) + "!")
    assert isinstance(expr, NodeList)
    assert [type(n) for n in expr.nodes] == [ConstantText, Gen, ConstantText, Select, ConstantText]
    assert [type(n) for n in sgl.user("hi").nodes] == [RoleBegin, ConstantText, RoleEnd]


def test_gen_record_carries_only_what_the_author_set():
    g = sgl.gen("x", max_tokens=5, stop="\n", temperature=0, top_logprobs_num=2)
    assert g.params.to_native() == {"max_new_tokens": 5, "stop": ["\n"], "temperature": 0}
    assert g.params.request_fields() == {"top_logprobs_num": 2}
    assert sgl.gen(max_new_tokens=3).params.max_new_tokens == 3


@sgl.function
def full(s, question):
    s += sgl.system("Be brief.")
    with s.user():
        s += "Q: " + question
    with s.var_scope("thought"):
        s += sgl.gen("think", max_tokens=4)
    s += sgl.select("kind", choices=["a", "b"])
    forks = s.fork(2)
    forks += lambda i: sgl.gen("branch", max_tokens=2)
    forks.join(mode="concate_and_append")
    s += s["think"] + sgl.gen("final")


def test_trace_records_every_node_kind_in_order():
    graph = full.trace()
    assert graph.stopped is None
    kinds = [type(n) for n in graph.nodes]
    assert kinds == [
        RoleBegin, ConstantText, RoleEnd,
        RoleBegin, ConstantText, Argument, RoleEnd,
        VarScopeBegin, Gen, VarScopeEnd,
        Select,
        Fork,
        Join,
        Variable, Gen,
    ]  # fmt: skip
    fork = graph.nodes[11]
    assert [[type(n) for n in b] for b in fork.branches] == [[GetForkItem, Gen]] * 2
    assert graph.nodes[12].mode == "concate_and_append"
    variable = graph.nodes[13]
    assert variable.name == "think" and variable.source is graph.nodes[8]
    names = [n.name for n in graph.of_type(Gen, Select)]
    assert names == ["think", "kind", "branch", "branch", "final"]


def test_trace_uses_given_arguments():
    graph = full.trace(question="Why?")
    texts = [n.value for n in graph.nodes if isinstance(n, ConstantText)]
    assert "Q: Why?" in texts and not graph.of_type(Argument)


def test_tracing_stops_cleanly_at_data_dependent_control_flow():
    @sgl.function
    def branchy(s):
        s += "A:" + sgl.select("x", choices=["yes", "no"])
        if s["x"] == "yes":
            s += sgl.gen("more")
        s += "never traced"

    graph = branchy.trace()
    assert [type(n) for n in graph.nodes] == [ConstantText, Select]
    assert "only known at run time" in graph.stopped


def test_tracing_stops_at_an_argument_used_as_data():
    @sgl.function
    def fmt(s, name):
        s += "Hello. "
        s += f"My name is {name}."

    graph = fmt.trace()
    assert [n.value for n in graph.nodes] == ["Hello. "]
    assert graph.stopped is not None
    assert [n.value for n in fmt.trace(name="Ann").nodes] == ["Hello. ", "My name is Ann."]


def test_tracing_stops_at_reading_the_text():
    @sgl.function
    def reader(s):
        s += "a" + sgl.gen("x")
        if "b" in s.text():
            s += "c"

    graph = reader.trace()
    assert len(graph.nodes) == 2 and "reads its generated text" in graph.stopped


def test_printer_lists_nodes_with_fork_branches():
    out = str(full.trace())
    lines = out.splitlines()
    assert lines[0] == "program full(question)"
    assert any("Gen(name='think', max_new_tokens=4)" in line for line in lines)
    assert any(line.strip() == "branch 0:" for line in lines)
    assert any("GetForkItem(index=1)" in line for line in lines)
    assert "tracing stopped" not in out
