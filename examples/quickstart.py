"""plait in one program: a two-turn chat on the default model (SmolLM2-135M-Instruct), run once,
as a batch, and streamed, with the speed of each.

    python examples/quickstart.py

The program is SGLang's: replacing ``import plait as sgl`` with ``import sglang as sgl`` runs it
on SGLang.
"""

from __future__ import annotations

import time

import plait as sgl


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant. Answer in one or two sentences.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=32))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=32))


QUESTIONS = [
    ("What is the capital of France?", "What is a famous building there?"),
    ("Write a haiku about the sea.", "Now one about the mountains."),
    ("Give a tip for writing clear code.", "Give one more."),
    ("What is a radix tree?", "Where is it used?"),
]


def counters(runtime: object) -> dict | None:
    """The worker's token counters: plait's backends have them, SGLang's RuntimeEndpoint not."""
    stats = getattr(runtime, "stats", None)
    return stats() if stats is not None else None


def main(runtime: sgl.Runtime | None = None) -> None:
    owned = runtime is None
    if owned:
        t0 = time.perf_counter()
        runtime = sgl.Runtime()  # a worker process for this machine, on the default model
        print(f"started the runtime ({runtime.model_path.name}) in {time.perf_counter() - t0:.1f}s")
    sgl.set_default_backend(runtime)
    try:
        # one program
        state = multi_turn_question.run(*QUESTIONS[0], temperature=0)
        for m in state.messages():
            print(f"{m['role']:>9}: {m['content']}")

        # a batch: the programs run concurrently and the worker batches their requests
        before = counters(runtime)
        t0 = time.perf_counter()
        states = multi_turn_question.run_batch(
            [{"question_1": a, "question_2": b} for a, b in QUESTIONS], temperature=0
        )
        elapsed = time.perf_counter() - t0
        after = counters(runtime)
        for (q1, q2), st in zip(QUESTIONS, states):
            print(f"\n### {q1}\n{st['answer_1'].strip()}\n### {q2}\n{st['answer_2'].strip()}")
        if before and after:
            tokens = after["generation_tokens"] - before["generation_tokens"]
            prompt = after["prompt_tokens"] - before["prompt_tokens"]
            hit = (after["cached_tokens"] - before["cached_tokens"]) / max(prompt, 1)
            print(
                f"\nbatch of {len(states)} programs: {tokens} tokens in {elapsed:.2f}s = "
                f"{tokens / elapsed:.1f} tokens/s, prefix cache hit rate {hit:.0%}"
            )

        # streaming: the second answer as it is generated
        print(f"\n### streaming: {QUESTIONS[1][1]}")
        before = counters(runtime)
        t0 = time.perf_counter()
        state = multi_turn_question.run(*QUESTIONS[1], temperature=0, stream=True)
        for chunk in state.text_iter("answer_2"):
            print(chunk, end="", flush=True)
        elapsed = time.perf_counter() - t0
        after = counters(runtime)
        if before and after:
            tokens = after["generation_tokens"] - before["generation_tokens"]
            print(
                f"\n\none program (two turns), streamed: {tokens} tokens in {elapsed:.2f}s = "
                f"{tokens / elapsed:.1f} tokens/s"
            )
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    main()
