"""General questions with short, checkable answers: the forgetting check of minipost.

Post-training on shop tickets can cost a real model what it knew before (catastrophic
forgetting; see e.g. Luo et al., 2023, "An Empirical Study of Catastrophic Forgetting in
Large Language Models During Continual Fine-tuning"). To measure it, every post-training
stage on a pretrained base reports general_accuracy before and after training
(minipost/evaluate.py): the share of these questions whose greedy reply states the answer
as a word (rewards.states_fact: case-insensitive, never part of a longer word or number).

    general_questions(split) -> [{"prompt": str, "answer": str, "kind": str}]

The questions are written by the project, simple enough that SmolLM2-135M-Instruct
answers most of them (docs/DESIGN.md gives its score per kind), and unambiguous: one
answer each, never a word of the question itself. They are a fixed set, the same for every
data seed and scale: half of each kind is the validation split (for choosing settings),
the other half the test split (for reporting them). Only the standard library is used.
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
]

OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
    ("wet", "dry"), ("left", "right"), ("full", "empty"), ("early", "late"), ("rich", "poor"),
    ("push", "pull"), ("win", "lose"), ("good", "bad"), ("true", "false"), ("top", "bottom"),
    ("north", "south"), ("east", "west"), ("buy", "sell"), ("always", "never"), ("boy", "girl"),
    ("summer", "winter"), ("high", "low"),
]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

COLOURS = [
    ("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
    ("coal", "black"), ("a ripe tomato", "red"), ("milk", "white"), ("a lemon", "yellow"),
    ("a carrot", "orange"), ("chocolate", "brown"), ("blood", "red"), ("a crow", "black"),
    ("a fresh leaf", "green"), ("a pumpkin", "orange"), ("a polar bear", "white"), ("the sea", "blue"),
]

PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("book", "books"), ("child", "children"), ("mouse", "mice"),
    ("foot", "feet"), ("tooth", "teeth"), ("man", "men"), ("woman", "women"), ("box", "boxes"),
    ("baby", "babies"), ("knife", "knives"), ("city", "cities"), ("bus", "buses"), ("tree", "trees"),
    ("apple", "apples"),
]


def _additions() -> list[tuple[str, str]]:
    """Ten one-digit and ten two-digit-plus-one-digit sums, drawn once from a fixed seed."""
    rng = random.Random("general/addition")
    sums = []
    for big in [False] * 10 + [True] * 10:
        a = rng.randint(10, 89) if big else rng.randint(1, 9)
        b = rng.randint(1, 9)
        sums.append((f"What is {a} + {b}? Answer with a number.", str(a + b)))
    return sums


def all_questions() -> dict[str, list[tuple[str, str]]]:
    """Every question, by kind: [(prompt, answer)]."""
    return {
        "capital": [(f"What is the capital of {c}? {ONE_WORD}", a) for c, a in CAPITALS],
        "addition": _additions(),
        "opposite": [(f"What is the opposite of {w}? {ONE_WORD}", a) for w, a in OPPOSITES],
        "next_weekday": [(f"Which day of the week comes after {d}? {ONE_WORD}", WEEKDAYS[(i + 1) % 7])
                         for i, d in enumerate(WEEKDAYS)],
        "next_month": [(f"Which month comes after {m}? {ONE_WORD}", MONTHS[(i + 1) % 12])
                       for i, m in enumerate(MONTHS)],
        "colour": [(f"What colour is {thing}? {ONE_WORD}", a) for thing, a in COLOURS],
        "plural": [(f"What is the plural of {w}? {ONE_WORD}", a) for w, a in PLURALS],
    }


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
