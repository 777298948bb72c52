"""Inputs of the program benchmark: fixed text in the shapes of the SGLang paper's workloads."""

from __future__ import annotations

# HellaSwag-style: a sentence and the ending that follows it (the 20 shots) ...
HELLASWAG_SHOTS = [
    ("A woman pours flour into a bowl. She", " cracks two eggs over it and starts to whisk."),
    ("A boy kicks a ball across the yard. His dog", " chases after it and brings it back."),
    ("A man climbs a ladder to the roof. He", " begins to clear the leaves from the gutter."),
    ("Two players face each other over a chessboard. The first", " moves a pawn forward."),
    ("A girl ties her running shoes. She", " jogs down the street toward the park."),
    ("A chef slices an onion on a board. He", " sweeps the pieces into a hot pan."),
    ("A cat crouches low in the grass. It", " pounces on a moth that lands nearby."),
    ("A student opens her notebook in class. She", " copies the notes from the board."),
    ("A driver stops at a red light. When it turns green, he", " drives through the crossing."),
    ("A man lathers soap on his face. He", " shaves carefully with a razor."),
    ("Kids build a tower of wooden blocks. The youngest", " knocks it over and laughs."),
    ("A gardener digs a hole in the soil. She", " places a young tree in it."),
    ("A swimmer stands on the starting block. At the whistle, she", " dives into the pool."),
    ("A man puts a kettle on the stove. When it whistles, he", " pours the water over tea."),
    ("A woman unlocks her front door. She", " steps inside and hangs up her coat."),
    ("A painter dips a brush into blue paint. He", " spreads it across the canvas."),
    ("A boy blows out the candles on a cake. His family", " claps and cheers for him."),
    ("A mechanic opens the hood of a car. He", " checks the oil level with a dipstick."),
    ("A baby drops a spoon from the high chair. Her father", " picks it up and washes it."),
    ("A fisherman casts a line into the lake. He", " waits quietly for a bite."),
]

# ... and the questions: a sentence, four endings, the index of the right one.
HELLASWAG_QUESTIONS = [
    (
        "A man pulls a sled up a snowy hill. At the top, he",
        [
            " sits on it and slides back down.",
            " plants a row of tomatoes.",
            " irons a stack of shirts.",
            " files his taxes online.",
        ],
        0,
    ),
    (
        "A woman fills a watering can at the tap. She",
        [
            " paints her nails red.",
            " waters the flowers on the porch.",
            " climbs onto the roof of a bus.",
            " reads the news to a horse.",
        ],
        1,
    ),
    (
        "A boy puts on a helmet and gets on his bike. He",
        [
            " bakes a loaf of bread.",
            " sings the national anthem to a fish.",
            " pedals down the driveway.",
            " sorts his socks by color.",
        ],
        2,
    ),
    (
        "A waiter carries a tray to a table. He",
        [
            " jumps into a swimming pool.",
            " repairs a broken engine.",
            " plants a flag on the moon.",
            " sets the plates in front of the guests.",
        ],
        3,
    ),
    (
        "A girl picks up a violin and a bow. She",
        [
            " plays a short tune for her teacher.",
            " mows the lawn with it.",
            " feeds it to the goats.",
            " mails it to the north pole.",
        ],
        0,
    ),
    (
        "A man holds an umbrella as rain starts to fall. He",
        [
            " sunbathes on the beach.",
            " opens it over his head.",
            " throws it into a fire.",
            " paints the sky green.",
        ],
        1,
    ),
    (
        "A woman puts bread in the toaster. When it pops up, she",
        [
            " sweeps the chimney.",
            " adopts a kitten.",
            " spreads butter on the toast.",
            " sends it to the dentist.",
        ],
        2,
    ),
    (
        "A dog sits by the door with a leash in its mouth. Its owner",
        [
            " cooks a large turkey.",
            " paints the ceiling.",
            " reads a book about whales.",
            " takes it out for a walk.",
        ],
        3,
    ),
    (
        "A teacher hands out the exam papers. The students",
        [
            " begin to write their answers.",
            " leave for a beach holiday.",
            " plant trees in the classroom.",
            " juggle the desks.",
        ],
        0,
    ),
    (
        "A man wheels his suitcase into the airport. He",
        [
            " milks a cow in the lobby.",
            " checks in at the airline counter.",
            " builds a snowman at the gate.",
            " repaints the runway.",
        ],
        1,
    ),
    (
        "A girl cracks an egg into a hot pan. She",
        [
            " wears it as a hat.",
            " throws the pan out the window.",
            " fries it until the edges are crisp.",
            " plays tennis with it.",
        ],
        2,
    ),
    (
        "A boy finds a splinter in his finger. His mother",
        [
            " buys him a sports car.",
            " sings to the neighbors.",
            " repaints the kitchen.",
            " removes it with tweezers.",
        ],
        3,
    ),
    (
        "A woman sits down at the piano. She",
        [
            " places her hands on the keys and plays.",
            " digs a well under it.",
            " mails it to her aunt.",
            " waters it like a plant.",
        ],
        0,
    ),
    (
        "A man sees that his phone battery is low. He",
        [
            " throws it into the ocean.",
            " plugs it into the charger.",
            " bakes it in the oven.",
            " teaches it to swim.",
        ],
        1,
    ),
    (
        "A child drops ice cream on the sidewalk. She",
        [
            " builds a rocket from it.",
            " paints it purple.",
            " starts to cry.",
            " sells it at an auction.",
        ],
        2,
    ),
    (
        "A carpenter measures a plank of wood. He",
        [
            " eats it for lunch.",
            " sings it a lullaby.",
            " gives it a bath.",
            " marks a line and saws along it.",
        ],
        3,
    ),
]


def hellaswag_prefix() -> str:
    return "".join(f"{context}{ending}\n\n" for context, ending in HELLASWAG_SHOTS)


CHAT_SYSTEM = "You are a helpful assistant. Answer in one short sentence."
CHAT_TOPICS = [
    ["What is a volcano?", "Where is the largest one?", "Is it active?", "Thanks, any safety tip?"],
    ["How do plants grow?", "What do they need most?", "Can they grow in the dark?", "Thanks!"],
    ["What is the Moon made of?", "How far away is it?", "Who walked on it first?", "Cool, bye!"],
    ["How does rain form?", "Why are clouds white?", "What is a rainbow?", "Thanks a lot."],
    ["What is a computer?", "What does the CPU do?", "And the memory?", "Thank you."],
    ["Why do cats purr?", "Do big cats purr too?", "How long do cats live?", "Great, thanks."],
    ["What is chess?", "How does the knight move?", "Who is a famous player?", "Thanks!"],
    ["What causes wind?", "What is a hurricane?", "How is it named?", "Thank you so much."],
]

TREE_INSTRUCTION = (
    "You are a careful problem solver. For each question, think of several different ideas, "
    "compare them, and then give one short final answer.\n\n"
)

REACT_PREFIX = """Solve a question with interleaving Thought, Action, Observation steps. Action can be:
Search[entity], which searches the entity and returns a short fact about it.
Lookup[keyword], which returns the next sentence containing keyword.
Finish[answer], which returns the answer and finishes the task.

Question: What river flows through the capital of Austria?
Thought 1: I need to find the capital of Austria, then the river that flows through it.
Action 1: Search[Austria]
Observation 1: Austria is a country in Central Europe. Its capital is Vienna.
Thought 2: The capital is Vienna. I need the river that flows through Vienna.
Action 2: Search[Vienna]
Observation 2: Vienna lies on the Danube river.
Thought 3: The river is the Danube.
Action 3: Finish[the Danube]

Question: Which is older, the Eiffel Tower or the Statue of Liberty?
Thought 1: I need the years both were finished.
Action 1: Search[Eiffel Tower]
Observation 1: The Eiffel Tower was completed in 1889.
Thought 2: Now the Statue of Liberty.
Action 2: Search[Statue of Liberty]
Observation 2: The Statue of Liberty was dedicated in 1886.
Thought 3: 1886 is earlier than 1889, so the Statue of Liberty is older.
Action 3: Finish[the Statue of Liberty]

"""

REACT_QUESTIONS = [
    "What ocean lies to the west of Portugal?",
    "Which planet in the solar system has the most moons?",
    "What language is spoken in the capital of Brazil?",
    "Who wrote the novel that features the whale Moby Dick?",
    "What is the highest mountain in the country where Kyoto is?",
    "Which city hosted the first modern Olympic Games?",
    "What is the currency of the country whose capital is Oslo?",
    "Which element has the chemical symbol Fe?",
]

REACT_ACTIONS = ["Search", "Lookup", "Finish"]


def observation(action: str, argument: str) -> str:
    """A deterministic stand-in for the tool: the same text for every system."""
    arg = argument.strip() or "it"
    if action == "Search":
        return f"{arg} is described in an encyclopedia article of about three hundred words."
    return f"The article mentions {arg} once, in its first paragraph."
