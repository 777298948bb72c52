"""Structured extraction: ``gen(json_schema=...)`` constrains decoding so the output always
parses and validates against the schema, even from a 135M model; forced text such as the keys
is appended in one step (jump-forward) instead of token by token.

    python examples/json_extraction.py
"""

from __future__ import annotations

import json

import plait as sgl

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

TEXTS = [
    "Maria Lopez is 34 years old and lives in Madrid, where she teaches music.",
    "Born 61 years ago, Kenji Sato still runs the bakery he opened in Osaka.",
    "The new intern, Tom Baker (22), moved from Leeds last month.",
]


@sgl.function
def extract(s, text):
    s += "Extract the person's name, age and city from the text as JSON.\n\n"
    s += 'Text: Anna Berg, 45, works as a nurse in Oslo.\nJSON: {"name": "Anna Berg", '
    s += '"age": 45, "city": "Oslo"}\n\n'
    s += "Text: " + text + "\nJSON: "
    s += sgl.gen("person", max_tokens=64, json_schema=json.dumps(SCHEMA))


def main(runtime: sgl.Runtime | None = None) -> list[dict]:
    owned = runtime is None
    runtime = runtime or sgl.Runtime()
    sgl.set_default_backend(runtime)
    try:
        states = extract.run_batch([{"text": t} for t in TEXTS], temperature=0)
        people = []
        for text, st in zip(TEXTS, states):
            person = json.loads(st["person"])  # always parses: decoding was constrained
            people.append(person)
            print(f"{text}\n  -> {person}")
        return people
    finally:
        if owned:
            runtime.shutdown()


if __name__ == "__main__":
    main()
