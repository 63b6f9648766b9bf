"""minipost.reward_fns: loading by import path, TRL's calling convention, weighted sums, errors
naming the function and record, and the built-in rewards equal to task + (format if ended)."""
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost import rewards as R
from minipost.reward_fns import (DEFAULT_REWARD_FNS, RewardFnError, combined_reward, load_reward_fn,
                                 load_reward_fns, minimart_format_reward, minimart_task_reward, score_each)
from minipost.rollout import builtin_reward

TOY = '''
def length(completions, **kwargs):
    return [float(len(c)) for c in completions]

def keyword(completions, keyword, prompts, **kwargs):
    # TRL's convention: columns arrive as lists aligned with the completions.
    return [2.0 if k in c else 0.0 for c, k in zip(completions, keyword)]

def raises_on_b(completions, **kwargs):
    return [1.0 / (c != "b") for c in completions]

def short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)

def nan(completions, **kwargs):
    return [float("nan") if c == "b" else 0.0 for c in completions]

def text(completions, **kwargs):
    return ["1"] * len(completions)

NOT_A_FUNCTION = 3
'''
PROMPT = [{"role": "user", "content": "q"}]


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(TOY)
    return path


def test_load_from_file_outside_the_package(toy):
    fn = load_reward_fn(f"{toy}:length")
    assert fn(["ab", "c"]) == [2.0, 1.0]
    assert "my_rewards" not in sys.modules  # run as a module of its own, not put on sys.path


def test_load_by_module_name(toy, monkeypatch):
    monkeypatch.syspath_prepend(str(toy.parent))
    assert load_reward_fn("my_rewards:length")(["abc"]) == [3.0]
    assert load_reward_fn("minipost.reward_fns:minimart_task_reward") is minimart_task_reward
    assert load_reward_fns(None) == [minimart_task_reward, minimart_format_reward]
    assert load_reward_fns([]) == load_reward_fns(list(DEFAULT_REWARD_FNS))


@pytest.mark.parametrize("spec, message", [
    ("length", "expected 'module:function'"),
    ("no_such_module_xyz:f", r"cannot import 'no_such_module_xyz'.*no_such_module_xyz\.py:f"),
    ("missing.py:f", "no such file missing.py"),
])
def test_load_errors(spec, message):
    with pytest.raises(RewardFnError, match=message):
        load_reward_fn(spec)


def test_load_errors_in_a_file(toy):
    with pytest.raises(RewardFnError, match=r"'absent' is not defined there; callables in .*: keyword, length, nan"):
        load_reward_fn(f"{toy}:absent")
    with pytest.raises(RewardFnError, match="'NOT_A_FUNCTION' is not callable"):
        load_reward_fn(f"{toy}:NOT_A_FUNCTION")
    broken = toy.parent / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RewardFnError, match="running .*broken.py failed: RuntimeError: boom"):
        load_reward_fn(f"{broken}:f")


def test_columns_and_weights(toy):
    fns = [load_reward_fn(f"{toy}:length"), load_reward_fn(f"{toy}:keyword")]
    completions = ["red box", "blue", "a red"]
    records = [{"prompt": PROMPT, "keyword": "red"}, {"prompt": PROMPT, "keyword": "red"},
               {"prompt": PROMPT, "keyword": "blue"}]
    assert score_each(fns, completions, records) == [[7.0, 4.0, 5.0], [2.0, 0.0, 0.0]]
    got = combined_reward(fns, [0.5, -3.0], completions, records)
    assert got == [0.5 * 7 - 3 * 2, 0.5 * 4 - 3 * 0, 0.5 * 5 - 3 * 0]
    assert combined_reward(fns, None, completions, records) == [9.0, 4.0, 5.0]
    with pytest.raises(RewardFnError, match="1 reward weights for 2 reward functions"):
        combined_reward(fns, [1.0], completions, records)


@pytest.mark.parametrize("name, message", [
    ("raises_on_b", r"raises_on_b raised on record 1 \(ZeroDivisionError"),
    ("short", r"short returned 2 values for 3 completions"),
    ("nan", r"nan returned nan for record 1; expected a finite number"),
    ("text", r"text returned '1' for record 0; expected a finite number"),
])
def test_bad_user_functions_are_named_with_the_record(toy, name, message):
    fn = load_reward_fn(f"{toy}:{name}")
    with pytest.raises(RewardFnError, match=f"reward function {toy}:{message}"):
        combined_reward([fn], None, ["a", "b", "c"], [{"prompt": PROMPT}] * 3)


def test_builtin_task_reward_needs_answer():
    with pytest.raises(RewardFnError, match="minimart_task_reward needs an 'answer' column .*have: \\['id'\\]"):
        combined_reward(load_reward_fns(), None, ["Total: $3"], [{"prompt": PROMPT, "id": 1}])
    with pytest.raises(RewardFnError, match="record 1 has 'answer' None"):
        combined_reward(load_reward_fns(), None, ["x", "y"], [{"prompt": PROMPT, "answer": "3"}, {"prompt": PROMPT}])
    with pytest.raises(RewardFnError, match="record 0 has 'answer' 3; expected a whole number as a string"):
        minimart_task_reward(["x"], answer=[3])


PIECES = ["Total: $", "Total: $23", "Total: 23", "$23.50", "23", "7", "Subtotal: $5", " ", "\n", "Hi there!",
          "Total: $7", "total: $7", ",5", "<|end|>"]


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), min_size=1, max_size=8),
       ended=st.data(), answers=st.data())
def test_builtin_default_equals_task_plus_format_if_ended(texts, ended, answers):
    ended = [ended.draw(st.booleans()) for _ in texts]
    records = [{"prompt": PROMPT, "answer": answers.draw(st.sampled_from(["23", "7", "0"]))} for _ in texts]
    got = combined_reward(load_reward_fns(), None, texts, records, ended)
    want = [R.task_reward(t, r["answer"]) + (R.format_reward(t) if e else 0.0)
            for t, e, r in zip(texts, ended, records)]
    assert got == want  # bit for bit
    assert builtin_reward(texts, ended, records) == want  # the RL stages' default
    assert score_each(load_reward_fns()[:1], texts, records, ended)[0] == [R.task_reward(t, r["answer"])
                                                                            for t, r in zip(texts, records)]


def test_missing_column_is_none_and_ended_defaults_to_true():
    seen = {}

    def spy(completions, **columns):
        seen.update(columns)
        return [0.0] * len(completions)

    combined_reward([spy], None, ["a", "b"], [{"prompt": PROMPT, "x": 1}, {"prompt": PROMPT, "y": 2}])
    assert seen == {"x": [1, None], "y": [None, 2], "prompts": [PROMPT, PROMPT]}
    assert minimart_format_reward(["Total: $5", "Total: $5"]) == [0.1, 0.1]
    assert minimart_format_reward(["Total: $5", "Total: $5"], ended=[True, False]) == [0.1, 0.0]
