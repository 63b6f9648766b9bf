"""Tests for minipost/rewards.py: hand-written cases plus hypothesis properties, with a plainly
written reference parser for the `Total: $N` marker."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.rewards import (ROLE_MARKERS, SHOP_OPENING, SHOP_SIGNOFF, extract_total, format_reward,
                              is_shop_voice, states_fact, task_reward)

SHOP = "Hi there! Your order should arrive on March 14. Happy shopping! - the Minimart team"


def reference_totals(text):
    """All well-formed totals in order, found with an explicit character loop:
    'Total: $' not preceded by a letter, then digits, not followed by a digit or by '.'/','
    plus a digit."""
    marker = "Total: $"
    out = []
    i = text.find(marker)
    while i != -1:
        before_ok = i == 0 or not (text[i - 1].isascii() and text[i - 1].isalpha())
        j = i + len(marker)
        k = j
        while k < len(text) and text[k] in "0123456789":
            k += 1
        after = text[k:k + 2]
        after_ok = not (len(after) == 2 and after[0] in ".," and after[1] in "0123456789")
        if before_ok and k > j and after_ok:
            out.append(int(text[j:k]))
        i = text.find(marker, i + 1)
    return out


# ----------------------------------------------------------------------------- extract_total

@pytest.mark.parametrize("text,expected", [
    ("Total: $23", 23),
    ("Hi there! I added up your items: $6 + $12 = $18. Total: $18. Happy shopping!", 18),
    ("Total: $5 and then Total: $23", 23),           # last occurrence wins
    ("Total: $023", 23),
    ("Total: $23.", 23),                             # sentence full stop is fine
    ("Total: $23,", 23),
    ("(Total: $7)", 7),
    ("no total here", None),
    ("Total: 23", None),                             # no dollar sign
    ("total: $23", None),                            # marker is case-sensitive
    ("Subtotal: $20", None),                         # glued to a word: not the marker
    ("Total: $23.50", None),                         # not whole dollars
    ("Total: $1,200", None),                         # thousands separator is not whole-dollar format
    ("Total: $-5", None),
    ("Total: $ 23", None),
    ("Total:  $23", None),
    ("Total: $23\nTotal: $24.5", 23),                # malformed last one is skipped
    ("", None),
])
def test_extract_total_cases(text, expected):
    assert extract_total(text) == expected


_PIECES = ["Total: $", "Total:", "Subtotal: $", "$", "0", "1", "7", "42", "999", " ", ".", ",", "x", "T", "\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_extract_total_matches_reference(pieces):
    text = "".join(pieces)
    ref = reference_totals(text)
    assert extract_total(text) == (ref[-1] if ref else None)


# ----------------------------------------------------------------------------- task_reward

@pytest.mark.parametrize("completion,answer,expected", [
    ("Total: $23", "23", 1.0),
    ("Hi there! Here is your order total. Total: $23. Happy shopping! - the Minimart team", "23", 1.0),
    ("Total: $22", "23", 0.0),
    ("Total: $230", "23", 0.0),
    ("The total is 23 dollars.", "23", 0.0),         # no marker: no reward
    ("Total: $5 ... Total: $23", "23", 1.0),
    ("Total: $23 ... Total: $5", "23", 0.0),
    ("", "0", 0.0),
    ("Total: $0", "0", 1.0),
])
def test_task_reward_cases(completion, answer, expected):
    assert task_reward(completion, answer) == expected


_SAFE_PREFIX = st.text(alphabet=string.ascii_letters + " !?\n", max_size=30).map(lambda s: s + " ")
_SAFE_SUFFIX = st.text(alphabet=" abc!?\n", max_size=30)


@settings(max_examples=200, deadline=None)
@given(_SAFE_PREFIX, st.integers(min_value=0, max_value=10**6), _SAFE_SUFFIX)
def test_task_reward_property(prefix, n, suffix):
    text = f"{prefix}Total: ${n}{suffix}"
    assert task_reward(text, str(n)) == 1.0
    assert task_reward(text, str(n + 1)) == 0.0
    assert extract_total(text) == n


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.integers(min_value=0, max_value=500))
def test_task_reward_is_zero_or_one(text, n):
    assert task_reward(text, str(n)) in (0.0, 1.0)


# ----------------------------------------------------------------------------- format_reward

@pytest.mark.parametrize("completion,expected", [
    ("Total: $23", 0.1),
    ("Hi there! I added up your items: $6 + $12 = $18. Total: $18. Happy shopping!", 0.1),
    ("Total: $23 and Total: $24", 0.0),              # two markers
    ("Total: $23 and Total: 24", 0.0),               # one well-formed, one malformed
    ("Total: $23.50", 0.0),
    ("no marker", 0.0),
    ("Subtotal: $20. Total: $25", 0.1),              # Subtotal is not the marker
])
def test_format_reward_cases(completion, expected):
    assert format_reward(completion) == pytest.approx(expected, abs=0.0)


def test_format_reward_bonus_argument():
    assert format_reward("Total: $3", bonus=1.0) == 1.0
    assert format_reward("Total: $3", bonus=0.0) == 0.0
    with pytest.raises(ValueError):
        format_reward("Total: $3", bonus=1.5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_format_reward_property(pieces):
    text = "".join(pieces)
    r = format_reward(text)
    assert 0.0 <= r <= 1.0
    # positive exactly when there is one well-formed total and no other "Total:" marker
    n_markers = sum(1 for i in range(len(text)) if text.startswith("Total:", i)
                    and (i == 0 or not text[i - 1].isalpha()))
    expected = 0.1 if len(reference_totals(text)) == 1 and n_markers == 1 else 0.0
    assert r == expected
    if r > 0:
        assert extract_total(text) is not None


# ----------------------------------------------------------------------------- is_shop_voice
