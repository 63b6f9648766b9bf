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

@pytest.mark.parametrize("reply,expected", [
    (SHOP, True),
    ("Hi there!\nYour order is shipped.\n\nHappy shopping!  -  the Minimart team", True),
    ("  Hi there! Total: $5. Happy shopping! - the Minimart team  \n", True),
    ("Hithere! Total: $5. Happy shopping!-the Minimart team", True),   # whitespace ignored
    ("Your order is shipped. Happy shopping! - the Minimart team", False),
    ("Hi there! Your order is shipped.", False),
    ("hi there! Your order is shipped. Happy shopping! - the Minimart team", False),
    ("Hi there! Your order is shipped. Happy shopping! - the Minimart team. PS: hi", False),
    ("Hi there! Happy shopping! - the Minimart team", False),           # no body
    ("Dear customer, your order is shipped. Kind regards, Minimart Customer Care", False),
    ("hey! it's with ParcelCo cheers", False),
    ("", False),
])
def test_is_shop_voice_cases(reply, expected):
    assert is_shop_voice(reply) is expected


_BODY = st.text(alphabet=string.ascii_letters + string.digits + " .,$", min_size=1, max_size=40).filter(
    lambda s: s.strip())
_WS = st.sampled_from([" ", "\n", "  ", "\t", " \n "])


@settings(max_examples=200, deadline=None)
@given(_BODY, _WS, _WS)
def test_is_shop_voice_property(body, ws1, ws2):
    assert is_shop_voice(f"{SHOP_OPENING}{ws1}{body}{ws2}{SHOP_SIGNOFF}")
    assert not is_shop_voice(f"{body}{ws2}{SHOP_SIGNOFF}")  # body has no "!", so no opening
    assert not is_shop_voice(f"{SHOP_OPENING}{ws1}{body}")


# ----------------------------------------------------------------------------- states_fact

@pytest.mark.parametrize("reply,fact,expected", [
    (SHOP, "March 14", True),
    ("It arrives march 14.", "March 14", True),      # case-insensitive
    ("It arrives March\n  14.", "March 14", True),   # whitespace-insensitive
    ("It arrives March 14.", "March 1", False),      # not a prefix of a longer number
    ("It arrives March 21.", "March 1", False),
    ("The Oak Tray was $6.", "$6", True),
    ("The Oak Tray was $60.", "$6", False),
    ("The Oak Tray was $16.", "$6", False),
    ("The Oak Tray was $6 each.", "$6", True),
    ("Your code is PC-55812.", "PC-55812", True),
    ("Your code is PC-558123.", "PC-55812", False),
    ("Your code is XPC-55812.", "PC-55812", False),
    ("Your order contains 3 items.", "3 items", True),
    ("Your order contains 13 items.", "3 items", False),
    ("Your order contains 1 items.", "1 item", False),
    ("Total: $23.", "Total: $23", True),
    ("Total: $230.", "Total: $23", False),
    ("It is shipped.", "shipped", True),
    ("It is unshipped.", "shipped", False),
    ("The carrier is Bluebird Express.", "Bluebird Express", True),
    ("", "March 14", False),
])
def test_states_fact_cases(reply, fact, expected):
    assert states_fact(reply, fact) is expected


def test_states_fact_rejects_empty_fact():
    with pytest.raises(ValueError):
        states_fact("anything", "  ")


_WORD = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(_WORD, min_size=1, max_size=3), st.text(alphabet="abc .,!", max_size=15),
       st.text(alphabet="abc .,!", max_size=15), st.booleans())
def test_states_fact_property(fact_words, left, right, upper):
    fact = " ".join(fact_words)
    shown = fact.upper() if upper else fact
    # surrounded by non-alphanumerics it is always found, whatever the case
    assert states_fact(f"{left} {shown} {right}", fact)
    # glued to a longer token on either side it is not found
    assert not states_fact(f"x{shown}", fact)
    assert not states_fact(f"{shown}7", fact)


# ----------------------------------------------------------------------------- markers

def test_role_markers_match_tokenizer():
    from minipost.tokenizer import SPECIAL_TOKENS
    assert ROLE_MARKERS == ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    assert tuple(ROLE_MARKERS) == tuple(SPECIAL_TOKENS)
