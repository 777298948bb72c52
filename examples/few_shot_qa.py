"""Few-shot question answering over a batch: every program shares a 20-example prefix, which
the radix cache computes once.

    python examples/few_shot_qa.py
"""

from __future__ import annotations

import time

import plait as sgl

EXAMPLES = [
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("How many continents are there on Earth?", "Seven."),
    ("What gas do plants absorb for photosynthesis?", "Carbon dioxide."),
    ("What is the chemical symbol for gold?", "Au."),
    ("In which country are the pyramids of Giza?", "Egypt."),
    ("What is the square root of 144?", "12."),
    ("Which organ pumps blood through the body?", "The heart."),
    ("What is the capital city of Japan?", "Tokyo."),
    ("How many legs does a spider have?", "Eight."),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("What is the longest river in Africa?", "The Nile."),
    ("How many minutes are in an hour?", "Sixty."),
    ("What is the hardest natural substance?", "Diamond."),
    ("Which planet is known as the Red Planet?", "Mars."),
    ("What is the main ingredient of guacamole?", "Avocado."),
    ("How many sides does a hexagon have?", "Six."),
    ("What do bees make?", "Honey."),
]
# (question, words one of which the right answer contains)
QUESTIONS = [
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the capital of Spain?", ["Madrid"]),
    ("How many days are in a week?", ["seven", "7"]),
    ("What color do you get by mixing blue and yellow?", ["green"]),
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("What is frozen water called?", ["ice"]),
    ("Who was the first person to walk on the Moon?", ["Armstrong"]),
]


@sgl.function
def few_shot_qa(s, question):
    s += "Answer each question in a few words.\n\n"
    for q, a in EXAMPLES:
        s += f"Question: {q}\nAnswer: {a}\n\n"
    s += "Question: " + question + "\nAnswer:"
    s += sgl.gen("answer", max_tokens=16, stop="\n")


def counters(runtime: object) -> dict | None:
    """The worker's token counters: plait's backends have them, SGLang's RuntimeEndpoint not."""
    stats = getattr(runtime, "stats", None)
    return stats() if stats is not None else None


def main(runtime: sgl.Runtime | None = None) -> None:
    owned = runtime is None
    runtime = runtime or sgl.Runtime()
    sgl.set_default_backend(runtime)
    try:
        before = counters(runtime)
        t0 = time.perf_counter()
        states = few_shot_qa.run_batch(
            [{"question": q} for q, _ in QUESTIONS], temperature=0, progress_bar=True
        )
        elapsed = time.perf_counter() - t0
        after = counters(runtime)
        right = 0
        for (q, keys), st in zip(QUESTIONS, states):
            answer = st["answer"].strip()
            ok = any(k.lower() in answer.lower() for k in keys)
            right += ok
            print(f"{'ok ' if ok else 'no '} {q} -> {answer}")
        line = (
            f"\n{right}/{len(QUESTIONS)} right; {len(states)} programs in {elapsed:.2f}s = "
            f"{len(states) / elapsed:.2f} programs/s"
        )
        if before and after:
            prompt = after["prompt_tokens"] - before["prompt_tokens"]
            hit = (after["cached_tokens"] - before["cached_tokens"]) / max(prompt, 1)
            line += f"; prefix cache hit rate {hit:.0%}"
        print(line)
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    main()
