"""Chat prompts whose natural answers range from one word to several hundred tokens.

Built from templates crossed with topics, deterministically (a fixed seed), so the ranker's
training data can be regenerated exactly. The template families are chosen so that the answer
length follows from the request's wording (one word, one sentence, a list, an essay), the
signal a ranker over prompt tokens can learn.
"""

from __future__ import annotations

import random

TOPICS = [
    "the ocean",
    "volcanoes",
    "the moon",
    "honey bees",
    "the Roman Empire",
    "electricity",
    "photosynthesis",
    "the internet",
    "chess",
    "coffee",
    "rainforests",
    "the human heart",
    "jazz music",
    "glaciers",
    "the printing press",
    "black holes",
    "democracy",
    "bicycles",
    "the immune system",
    "ancient Egypt",
    "solar energy",
    "dinosaurs",
    "the stock market",
    "friendship",
    "recycling",
    "the piano",
    "earthquakes",
    "vaccines",
    "trains",
    "bread",
    "the desert",
    "whales",
    "mathematics",
    "the Olympic Games",
    "gravity",
    "tea",
    "the French Revolution",
    "robots",
    "mountains",
    "sleep",
]
COUNTRIES = [
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "Kenya",
    "India",
    "Mexico",
    "Norway",
    "Peru",
    "Spain",
    "Italy",
    "Germany",
    "Chile",
    "Greece",
    "Turkey",
    "Vietnam",
    "Ireland",
]
WORDS = ["house", "water", "friend", "book", "tree", "cat", "sun", "bread", "city", "river"]
THINGS = ["an apple", "a carrot", "a dog", "a rock", "a tomato", "a car", "a banana", "a fish"]
TASKS = [
    "bake bread",
    "plant a tree",
    "change a tire",
    "learn a new language",
    "write a resume",
    "start a vegetable garden",
    "train for a marathon",
    "cook rice",
    "paint a room",
    "prepare for a job interview",
    "build a birdhouse",
    "save money each month",
]
CATEGORIES = ["animals", "fruits", "countries", "musical instruments", "sports", "colors"]

# (family, template); the family is kept in the data for analysis only, never a feature
TEMPLATES: list[tuple[str, str]] = [
    ("word", "What is the capital of {country}? Answer with one word."),
    ("word", "Is {thing} a fruit? Answer only yes or no."),
    ("word", "What is {a} plus {b}? Reply with just the number."),
    ("word", "Give one word that means the same as '{word}'. Only the word."),
    ("word", "Translate the word '{word}' into Spanish. Reply with the word only."),
    ("sentence", "Describe {topic} in one short sentence."),
    ("sentence", "What is {topic}? Answer in one sentence."),
    ("sentence", "Give me a one-line fun fact about {topic}."),
    ("short", "Name three facts about {topic}."),
    ("short", "List five {category}."),
    ("short", "Briefly explain why {topic} matters, in two or three sentences."),
    ("long", "Explain step by step how to {task}."),
    ("long", "Write a detailed essay about {topic}."),
    ("long", "Write a short story about a child who discovers {topic}."),
    ("long", "Write a long poem about {topic}."),
    ("long", "List twenty {category} and describe each one in a sentence."),
    ("long", "Give me a complete beginner's guide to {topic}, with sections and examples."),
]


def make_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Up to ``n`` distinct prompts ``{"prompt", "family"}``, round-robin over the templates
    (a template whose fillings are exhausted is skipped), shuffled."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for i in range(n * 4):
        if len(out) == n:
            break
        family, tpl = TEMPLATES[i % len(TEMPLATES)]
        text = tpl.format(
            country=rng.choice(COUNTRIES), thing=rng.choice(THINGS), a=rng.randint(2, 99),
            b=rng.randint(2, 99), word=rng.choice(WORDS), topic=rng.choice(TOPICS),
            task=rng.choice(TASKS), category=rng.choice(CATEGORIES),
        )  # fmt: skip
        if text not in seen:
            seen.add(text)
            out.append({"prompt": text, "family": family})
    rng.shuffle(out)
    return out
