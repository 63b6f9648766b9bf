"""Tests for data/general.py (the general questions of the forgetting check) and for the
judge evaluate.general_accuracy scores them with, on hand-written replies."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from minipost import evaluate
from minipost.rewards import states_fact

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_data", ROOT / "data" / "make_data.py")
md = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md)  # puts data/ on sys.path
import general  # noqa: E402


def test_splits_are_disjoint_halves_of_every_kind():
    val, test = general.general_questions("val"), general.general_questions("test")
    everything = general.all_questions()
    assert 50 <= len(val) <= 70 and 50 <= len(test) <= 70
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in test}
    for kind, questions in everything.items():
        in_val = [r for r in val if r["kind"] == kind]
        in_test = [r for r in test if r["kind"] == kind]
        assert in_val and in_test and abs(len(in_val) - len(in_test)) <= 1, kind
        assert sorted((r["prompt"], r["answer"]) for r in in_val + in_test) == sorted(questions)
    assert general.general_questions("val") == val  # a fixed set: the same on every call
    with pytest.raises(ValueError, match="'val' or 'test'"):
        general.general_questions("train")


def test_questions_are_well_formed_and_answers_are_not_given_away():
    for split in ("val", "test"):
        for r in general.general_questions(split):
            assert set(r) == {"prompt", "answer", "kind"} and all(isinstance(v, str) and v for v in r.values())
            assert r["prompt"].endswith(("Answer with one word.", "Answer with a number."))
            # the answer is never a word of the question, so echoing it scores nothing
            assert not states_fact(r["prompt"], r["answer"]), r
            assert all(ord(c) < 128 for c in r["prompt"] + r["answer"])


def test_sums_are_right_and_distinct():
    sums = general.all_questions()["addition"]
    for prompt, answer in sums:
        a, b = map(int, re.match(r"What is (\d) \+ (\d)\? Answer with a number\.$", prompt).groups())
        assert int(answer) == a + b and a >= 1 and b >= 1
    assert len({p for p, _ in sums}) == len(sums) == 12


def test_written_by_generate_beside_the_shop_data(tmp_path):
    paths = md.generate(tmp_path, scale=0.01)
    for split in ("val", "test"):
        lines = paths[f"general_{split}"].read_text().splitlines()
        assert [json.loads(line) for line in lines] == general.general_questions(split)


# ----------------------------------------------------------------------------- the judge

@pytest.mark.parametrize("reply,answer,right", [
    ("Paris", "Paris", True),
    ("The capital of France is Paris.", "Paris", True),
    ("PARIS!", "Paris", True),
    ('The answer is "cold"', "cold", True),
    ("3 + 4 = 7", "7", True),
    ("The capital of France is Lyon.", "Paris", False),
    ("Parisian food is famous.", "Paris", False),   # the answer inside a longer word
    ("The answer is 17.", "7", False),              # inside a longer number
    ("The plural of cat is cat.", "cats", False),
    ("", "Paris", False),
])
def test_judge_on_hand_written_replies(monkeypatch, reply, answer, right):
    record = {"prompt": "a question", "answer": answer, "kind": "k"}
    monkeypatch.setattr(evaluate, "greedy_replies", lambda model, tok, prompts, n: [(reply, True)] * len(prompts))
    assert evaluate.general_accuracy(None, None, [record]) == {
        "general_accuracy": float(right), "general_accuracy_by_kind": {"k": float(right)}}


def test_general_accuracy_counts_per_kind(monkeypatch):
    records = [{"prompt": f"q{i}", "answer": a, "kind": k}
               for i, (a, k) in enumerate([("Paris", "capital"), ("Rome", "capital"), ("cold", "opposite"),
                                           ("7", "addition"), ("12", "addition"), ("cats", "plural")])]
    replies = ["Paris.", "It is Madrid.", "cold", "The sum is 7.", "It is 120.", "cats"]
    seen = []

    def fake(model, tok, prompts, max_new_tokens):
        seen.extend(prompts)
        return [(text, True) for text in replies]

    monkeypatch.setattr(evaluate, "greedy_replies", fake)
    out = evaluate.general_accuracy(None, None, records)
    assert seen == [[{"role": "user", "content": r["prompt"]}] for r in records]  # one user turn each
    assert out == {"general_accuracy": 4 / 6,
                   "general_accuracy_by_kind": {"addition": 0.5, "capital": 0.5, "opposite": 1.0, "plural": 1.0}}
