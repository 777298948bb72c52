"""plait programs over an OpenAI-compatible API, here plait's own server (``plait serve``).

The same ``@function`` runs on any backend: ``sgl.OpenAI(model, base_url=...)`` sends a chat
model the conversation as messages, and scores ``select`` choices on a completion model with
``echo`` + ``logprobs``. The raw ``openai`` client talks to the same server.

    python examples/openai_client.py                       # starts `plait serve` itself
    python examples/openai_client.py --base-url http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse

from openai import OpenAI

import plait as sgl
from plait.runtime.server.launch import serve

MODEL = "SmolLM2-135M-Instruct"


@sgl.function
def ask(s, question):
    s += sgl.system("You are a concise assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=40))


@sgl.function
def sentiment(s, review):
    s += "Review: The food was cold and the waiter was rude.\nSentiment: negative\n\n"
    s += "Review: A delightful film, I would watch it again.\nSentiment: positive\n\n"
    s += "Review: " + review + "\nSentiment:"
    s += sgl.select("label", choices=[" positive", " negative"])


REVIEWS = [
    "I loved every minute of it, wonderful acting.",
    "Terrible plot, I walked out after twenty minutes.",
]


def run(base_url: str) -> None:
    chat = sgl.OpenAI(MODEL, base_url=f"{base_url}/v1")
    completion = sgl.OpenAI(MODEL, base_url=f"{base_url}/v1", is_chat_model=False)
    try:
        state = ask.run("What is the capital of France?", temperature=0, backend=chat)
        print(f"chat model, as messages {state.messages()[:-1]}:\n  {state['answer'].strip()}")
        states = sentiment.run_batch(
            [{"review": r} for r in REVIEWS], temperature=0, backend=completion
        )
        for review, st in zip(REVIEWS, states):
            scores = st.get_meta_info("label")["normalized_prompt_logprobs"]
            print(f"select via echo: {review!r} ->{st['label']} (mean logprobs {scores})")
    finally:
        chat.shutdown()
        completion.shutdown()

    client = OpenAI(base_url=f"{base_url}/v1", api_key="none")
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=16,
        temperature=0,
    )
    print(f"openai client directly: {reply.choices[0].message.content}")


def main(base_url: str | None = None) -> None:
    if base_url is not None:
        run(base_url)
        return
    with serve() as server:  # `plait serve` on a free port, stopped afterwards
        run(server.url)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default=None, help="a running plait (or other) server")
    main(ap.parse_args().base_url)
