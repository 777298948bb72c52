"""A multi-turn chat: each turn's program continues the conversation so far, and the worker's
radix cache holds the earlier turns (the prompt grows, the computed part does not).

    python examples/chat.py             # a scripted conversation
    python examples/chat.py --interactive
"""

from __future__ import annotations

import argparse

import plait as sgl

SYSTEM = "You are a friendly assistant. Keep every answer under three sentences."
SCRIPT = [
    "Hi! Can you suggest a name for a small orange cat?",
    "Nice. Why does that name fit?",
    "What food should I buy for her?",
    "Thanks! Summarize your advice in one sentence.",
]


@sgl.function
def chat_turn(s, history, message):
    s += sgl.system(SYSTEM)
    for user, assistant in history:
        s += sgl.user(user)
        s += sgl.assistant(assistant)
    s += sgl.user(message)
    s += sgl.assistant(sgl.gen("reply", max_tokens=64))


def converse(messages, stream: bool = True) -> list[tuple[str, str]]:
    history: list[tuple[str, str]] = []
    for message in messages:
        print(f"\nuser: {message}\nassistant: ", end="", flush=True)
        state = chat_turn.run(history=history, message=message, temperature=0, stream=stream)
        for chunk in state.text_iter("reply"):
            print(chunk, end="", flush=True)
        history.append((message, state["reply"].strip()))
        cached = state.get_meta_info("reply").get("cached_tokens")
        if cached is not None:
            prompt = state.get_meta_info("reply")["prompt_tokens"]
            print(f"\n  [{cached}/{prompt} prompt tokens from the prefix cache]", end="")
    print()
    return history


def main(runtime: sgl.Runtime | None = None, interactive: bool = False) -> None:
    owned = runtime is None
    runtime = runtime or sgl.Runtime()
    sgl.set_default_backend(runtime)
    try:
        if not interactive:
            converse(SCRIPT, stream=False)
            return

        def read() -> str:
            while (line := input("\nyou (empty line to quit): ").strip()) != "":
                yield line

        converse(read())
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactive", action="store_true")
    main(interactive=ap.parse_args().interactive)
