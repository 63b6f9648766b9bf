"""General questions with short, checkable answers: the forgetting check of minipost.

Post-training on shop tickets can cost a real model what it knew before (catastrophic
forgetting; see e.g. Luo et al., 2023, "An Empirical Study of Catastrophic Forgetting in
Large Language Models During Continual Fine-tuning"). To measure it, every post-training
stage that generates (SFT, DPO, GRPO, RLOO, PPO) on a pretrained base reports
general_accuracy before and after training (minipost/evaluate.py): the share of these
questions whose greedy reply states the answer as a word (rewards.states_fact:
case-insensitive, never part of a longer word or number).

    general_questions(split) -> [{"prompt": str, "answer": str, "kind": str}]

The questions are written by the project, simple enough that SmolLM2-135M-Instruct
answers most of them, and unambiguous: one answer each, never a word of the question
itself. Kinds it could not do were dropped (greedy replies of the base model, fp32):
the day after a weekday (1 of 4: "The day after Monday is Sunday"), the month after a
month (2 of 6), colours of things (2 of 8: snow is "blue"), two-digit sums (0 of 5).
On the kept set the base model's general_accuracy on general_val is 0.81 (47 of 58; fp32,
greedy, 24 new tokens): capitals 19/21, sums 5/6, opposites 12/17 ("the opposite of win is
loss"), plurals 11/14 ("the plural of person is person").
They are a fixed set, the same for every data seed and scale: half of each kind is the
validation split (for choosing settings), the other half the test split (for reporting
them). Only the standard library is used.
"""

from __future__ import annotations

import random

ONE_WORD = "Answer with one word."

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Canada", "Ottawa"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("Peru", "Lima"),
    ("Cuba", "Havana"), ("South Korea", "Seoul"), ("Hungary", "Budapest"), ("Finland", "Helsinki"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Denmark", "Copenhagen"),
    ("the Czech Republic", "Prague"), ("Scotland", "Edinburgh"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Vietnam", "Hanoi"), ("the Philippines", "Manila"), ("Indonesia", "Jakarta"), ("Afghanistan", "Kabul"),
    ("Venezuela", "Caracas"), ("Iceland", "Reykjavik"), ("Saudi Arabia", "Riyadh"), ("Romania", "Bucharest"),
]

OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
    ("wet", "dry"), ("left", "right"), ("full", "empty"), ("early", "late"), ("rich", "poor"),
    ("push", "pull"), ("win", "lose"), ("good", "bad"), ("true", "false"), ("top", "bottom"),
    ("north", "south"), ("east", "west"), ("buy", "sell"), ("always", "never"), ("boy", "girl"),
    ("summer", "winter"), ("high", "low"), ("love", "hate"), ("inside", "outside"), ("before", "after"),
    ("alive", "dead"), ("thick", "thin"), ("heavy", "light"), ("strong", "weak"), ("clean", "dirty"),
    ("cheap", "expensive"), ("young", "old"), ("male", "female"), ("asleep", "awake"),
]

PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("book", "books"), ("child", "children"), ("mouse", "mice"),
    ("foot", "feet"), ("tooth", "teeth"), ("man", "men"), ("woman", "women"), ("box", "boxes"),
    ("baby", "babies"), ("knife", "knives"), ("city", "cities"), ("bus", "buses"), ("tree", "trees"),
    ("apple", "apples"), ("goose", "geese"), ("wolf", "wolves"), ("leaf", "leaves"), ("person", "people"),
    ("glass", "glasses"), ("church", "churches"), ("potato", "potatoes"), ("lady", "ladies"),
    ("story", "stories"), ("house", "houses"), ("horse", "horses"),
]


def _additions() -> list[tuple[str, str]]:
    """Twelve distinct sums of two digits 1..9, drawn once from a fixed seed. (Two-digit sums
    were dropped: SmolLM2-135M-Instruct got 0 of 5 of them, "77 + 5 = 122".)"""
    rng = random.Random("general/addition")
    pairs: list[tuple[int, int]] = []
    while len(pairs) < 12:
        pair = (rng.randint(1, 9), rng.randint(1, 9))
        if pair not in pairs:
            pairs.append(pair)
    return [(f"What is {a} + {b}? Answer with a number.", str(a + b)) for a, b in pairs]


def all_questions() -> dict[str, list[tuple[str, str]]]:
    """Every question, by kind: [(prompt, answer)]."""
    return {
        "capital": [(f"What is the capital of {c}? {ONE_WORD}", a) for c, a in CAPITALS],
        "addition": _additions(),
        "opposite": [(f"What is the opposite of {w}? {ONE_WORD}", a) for w, a in OPPOSITES],
        "plural": [(f"What is the plural of {w}? {ONE_WORD}", a) for w, a in PLURALS],
    }


# Replay prompts (minipost/replay.py): general requests of OTHER kinds than the questions
# above, so that rehearsing the base model's own replies to them cannot teach the held-out
# answers. No answers are stored: the replies come from the model being fine-tuned.
REPLAY_PROMPTS = [
    "What sound does a cow make?", "How many legs does a spider have?", "What do bees make?",
    "Which animal is known as the king of the jungle?", "Where do penguins live?", "What do rabbits like to eat?",
    "What colour is grass?", "What colour is a banana?", "What colour do you get by mixing blue and yellow?",
    "What is a hammer used for?", "What is an umbrella for?", "What do you use a spoon for?",
    "What is a verb?", "What does a doctor do?", "What does a baker make?", "What is a library?",
    "Write one sentence about the sea.", "Write a short sentence about autumn.", "Describe a rainy day in one sentence.",
    "Give me a word that rhymes with cat.", "Spell the word 'water' backwards.", "How many days are in a week?",
    "How many minutes are in an hour?", "How many months are in a year?", "What do you call a baby dog?",
    "What is the hottest season of the year?", "Is the sun a star or a planet?", "What is the largest ocean on Earth?",
    "What gas do plants take in?", "What is ice made of?", "Why do we need sleep?", "Why is the sky blue?",
    "Name a fruit that is red.", "Name a vegetable that is orange.", "Name a musical instrument with strings.",
    "Name a sport played with a ball.", "Who wrote Romeo and Juliet?", "What language is spoken in Brazil?",
    "What is the tallest animal?", "What is the boiling point of water in Celsius?",
    "Give me a tip for staying healthy.", "How do I make a cup of tea?", "Suggest a name for a pet goldfish.",
    "Translate 'thank you' into Spanish.", "What is the first letter of the alphabet?",
    "Say hello in French.", "What shape has three sides?", "How many wheels does a bicycle have?",
]


def replay_prompts() -> list[dict]:
    """The replay prompts as records {"prompt"} (data/minimart/general_replay.jsonl)."""
    return [{"prompt": prompt} for prompt in REPLAY_PROMPTS]


def general_questions(split: str) -> list[dict]:
    """The "val" or "test" half of every kind (each kind shuffled once by a fixed seed, then
    alternate questions go to val and test, so both splits hold every kind)."""
    if split not in ("val", "test"):
        raise ValueError(f"general_questions: split must be 'val' or 'test', got {split!r}")
    out = []
    for kind, questions in all_questions().items():
        order = list(questions)
        random.Random(f"general/{kind}").shuffle(order)
        half = order[0::2] if split == "val" else order[1::2]
        out += [{"prompt": prompt, "answer": answer, "kind": kind} for prompt, answer in half]
    return out
