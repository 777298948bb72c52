"""Tree of thought with ``fork``: each question branches into three lines of reasoning that run
in parallel over the shared prefix (computed once, then reused by every branch from the radix
cache); a judge step compares them and the program answers.

    python examples/tree_of_thought.py
"""

from __future__ import annotations

import plait as sgl

INSTRUCTIONS = (
    "You solve problems step by step. Propose different approaches, compare them, and give a "
    "short final answer.\n\n"
)
APPROACHES = ["Work it out directly.", "Break it into smaller steps.", "Check with an example."]


@sgl.function
def tree_of_thought(s, question):
    s += INSTRUCTIONS + "Problem: " + question + "\n"
    forks = s.fork(len(APPROACHES))
    forks += lambda i: (
        f"Approach {i + 1} ({APPROACHES[i]}):" + sgl.gen("idea", max_tokens=40, stop="\n")
    )
    forks.join()
    for i, idea in enumerate(s["idea"]):
        s += f"Approach {i + 1}:{idea}\n"
    s += "The most convincing approach is number " + sgl.select(
        "best", choices=[str(i + 1) for i in range(len(APPROACHES))]
    )
    s += ".\nFinal answer:" + sgl.gen("answer", max_tokens=24, stop="\n")


QUESTIONS = [
    "A train travels 60 kilometres in one hour. How far does it go in three hours?",
    "If you have 3 boxes with 4 apples each, how many apples do you have?",
]


def main(runtime: sgl.Runtime | None = None) -> None:
    owned = runtime is None
    runtime = runtime or sgl.Runtime()
    sgl.set_default_backend(runtime)
    try:
        states = tree_of_thought.run_batch([{"question": q} for q in QUESTIONS], temperature=0)
        for q, st in zip(QUESTIONS, states):
            print(f"### {q}")
            for i, idea in enumerate(st["idea"]):
                print(f"  approach {i + 1}:{idea}")
            print(f"  judged best: {st['best']}\n  answer:{st['answer']}\n")
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    main()
