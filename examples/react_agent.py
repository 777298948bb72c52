"""A ReAct-style agent: the model thinks, picks a tool with ``select`` (so the action is always a
valid tool name), writes the tool's argument with ``gen``; the program runs the tool and appends
its result. Python control flow branches on the selected action.

    python examples/react_agent.py
"""

from __future__ import annotations

import ast
import operator

import plait as sgl

FACTS = {
    "france": "France is a country in Europe. Its capital is Paris.",
    "paris": "Paris has about 2.1 million inhabitants.",
    "japan": "Japan is an island country in Asia. Its capital is Tokyo.",
    "tokyo": "Tokyo has about 14 million inhabitants.",
    "everest": "Mount Everest is 8849 metres high.",
    "nile": "The Nile is about 6650 kilometres long.",
}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_OPS |= {ast.Div: operator.truediv, ast.USub: operator.neg}


def calculate(expression: str) -> str:
    """Arithmetic only: numbers, + - * / and parentheses."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("not arithmetic")

    try:
        value = ev(ast.parse(expression.replace(",", ""), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return f"cannot calculate {expression!r}"
    return f"{value:g}"


def lookup(topic: str) -> str:
    words = [w.strip(".,?!").lower() for w in topic.split()]
    hits = [FACTS[w] for w in words if w in FACTS]
    return " ".join(hits) if hits else f"nothing found about {topic!r}"


TOOLS = {"lookup": lookup, "calculate": calculate}

INSTRUCTIONS = """Answer the question using tools. After each Thought, choose an Action:
lookup[topic] finds a fact about a topic; calculate[expression] does arithmetic;
finish[answer] gives the final answer.

Question: How many metres higher is Mount Everest than 8000 metres?
Thought: I need the height of Mount Everest.
Action: lookup[everest]
Observation: Mount Everest is 8849 metres high.
Thought: Now subtract 8000 from 8849.
Action: calculate[8849 - 8000]
Observation: 849
Thought: The difference is 849 metres.
Action: finish[849 metres]

"""


@sgl.function
def react(s, question, max_steps=4):
    s += INSTRUCTIONS + "Question: " + question + "\n"
    for _ in range(max_steps):
        s += "Thought:" + sgl.gen("thought", max_tokens=32, stop="\n") + "\n"
        s += "Action: " + sgl.select("action", choices=["lookup", "calculate", "finish"])
        s += "[" + sgl.gen("argument", max_tokens=16, stop=["]", "\n"]) + "]\n"
        if s["action"] == "finish":
            s["answer"] = s["argument"].strip()
            return
        s += "Observation: " + TOOLS[s["action"]](s["argument"]) + "\n"
    s["answer"] = None


QUESTIONS = [
    "What is the capital of Japan?",
    "How many inhabitants do Paris and Tokyo have together, in millions?",
    "How long is the Nile in metres?",
]


def main(runtime: sgl.Runtime | None = None) -> None:
    owned = runtime is None
    runtime = runtime or sgl.Runtime()
    sgl.set_default_backend(runtime)
    try:
        states = react.run_batch([{"question": q} for q in QUESTIONS], temperature=0)
        for st in states:
            trace = st.text()[len(INSTRUCTIONS) :]
            print(f"{trace.strip()}\n=> answer: {st['answer']}\n")
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    main()
