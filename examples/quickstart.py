"""Generate with the default model (SmolLM2-135M-Instruct) and print the text and its speed."""

from __future__ import annotations

import time

from plait.runtime import Engine


def main() -> None:
    t0 = time.perf_counter()
    engine = Engine()
    print(f"loaded {engine.loaded.path.name} in {time.perf_counter() - t0:.1f}s")

    questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Give three tips for writing clear code.",
        "Explain what a radix tree is in one sentence.",
    ]
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    params = {"max_new_tokens": 64, "temperature": 0}

    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    for q, o in zip(questions, outs):
        print(f"\n### {q}\n{o['text'].strip()}")
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    print(
        f"\nbatch of {len(outs)}: {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.1f} tokens/s"
    )

    t0 = time.perf_counter()
    n = 0
    print("\n### streaming: Tell me a short story about a robot.")
    story = engine.apply_chat_template(
        [{"role": "user", "content": "Tell me a short story about a robot."}]
    )
    for chunk in engine.generate(story, {"max_new_tokens": 64, "temperature": 0}, stream=True):
        print(chunk["delta"], end="", flush=True)
        n = chunk["meta_info"]["completion_tokens"]
    elapsed = time.perf_counter() - t0
    print(f"\n\nsingle stream: {n} tokens in {elapsed:.2f}s = {n / elapsed:.1f} tokens/s")


if __name__ == "__main__":
    main()
