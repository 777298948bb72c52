"""Prompts for the offline benchmarks: deterministic, built from fixed text."""

from __future__ import annotations

import random

FEW_SHOT = [
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("How many continents are there on Earth?", "Seven."),
    ("What gas do plants absorb from the air for photosynthesis?", "Carbon dioxide."),
    ("What is the chemical symbol for gold?", "Au."),
    ("In which country are the pyramids of Giza?", "Egypt."),
    ("What is the square root of 144?", "12."),
    ("Which organ pumps blood through the human body?", "The heart."),
    ("What is the capital city of Japan?", "Tokyo."),
    ("How many legs does a spider have?", "Eight."),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("What is the longest river in Africa?", "The Nile."),
    ("What language has the most native speakers?", "Mandarin Chinese."),
    ("How many minutes are in an hour?", "Sixty."),
    ("What is the hardest natural substance?", "Diamond."),
    ("Which planet is known as the Red Planet?", "Mars."),
    ("What is the main ingredient of guacamole?", "Avocado."),
    ("How many sides does a hexagon have?", "Six."),
]

QUESTIONS = [
    "What is the capital of Italy?",
    "How many days are in a leap year?",
    "What is the smallest prime number?",
    "Who discovered penicillin?",
    "What is the largest ocean on Earth?",
    "How many strings does a violin have?",
    "What metal is liquid at room temperature?",
    "What is the tallest mountain in the world?",
    "Which animal is known as the king of the jungle?",
    "What is the currency of the United Kingdom?",
    "How many players are on a soccer team?",
    "What is the capital of Canada?",
    "What do bees make?",
    "Which bird is a symbol of peace?",
    "What is the opposite of north?",
    "How many hours are in a day?",
    "What color do you get by mixing blue and yellow?",
    "What is the largest mammal?",
    "What is frozen water called?",
    "Which planet is closest to the Sun?",
    "What instrument has 88 keys?",
    "How many weeks are in a year?",
    "What is the capital of Australia?",
    "What is H2O commonly called?",
    "Who was the first person to walk on the Moon?",
    "What is the fastest land animal?",
    "How many bones are in the adult human body?",
    "What is the capital of Spain?",
    "Which gas do humans exhale?",
    "What shape has three sides?",
    "What is the largest desert in the world?",
    "How many colors are in a rainbow?",
]

WORDS = (
    "river stone light garden window silver market engine forest letter bridge candle summer "
    "harbor violin paper orange planet winter mirror castle signal thunder valley copper "
    "lantern meadow rocket pencil island shadow marble falcon velvet compass"
).split()


def few_shot_prefix() -> str:
    """About 400 tokens of question/answer pairs that every request shares."""
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT)


def shared_prefix_prompts(n: int = 32) -> list[str]:
    prefix = few_shot_prefix()
    return [f"{prefix}Question: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:" for i in range(n)]


def distinct_prompts(n: int = 32, words: int = 120, seed: int = 0) -> list[str]:
    """Prompts that share nothing beyond the first word or so."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(n)]
