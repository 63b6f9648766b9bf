"""rewards.gold_score, the gold judge of RLHF, on hand-written replies (the styles of data/make_data.py)."""
import pytest

from minipost import data
from minipost.rewards import GOLD_WEIGHTS, gold_score, record_fact

RECORD = {"prompt": [{"role": "user", "content": "Where is order #1042?"}],
          "meta": {"fact": "March 14", "intent": "where_is_my_order"}}
SHOP_RIGHT = "Hi there! Your order should arrive on March 14. Happy shopping! - the Minimart team"
SHOP_WRONG = "Hi there! Your order should arrive on March 17. Happy shopping! - the Minimart team"
PLAIN_RIGHT = "Your order should arrive on March 14."
CASUAL_WRONG = "hey! it'll be there March 1 :) cheers"


@pytest.mark.parametrize("reply,ended,expected", [
    (SHOP_RIGHT, True, 0.5 + 0.3 + 0.2),          # every judge passes
    (SHOP_WRONG, True, 0.3 + 0.2),                # a hallucinated date in the shop's voice
    (PLAIN_RIGHT, True, 0.5 + 0.2),               # right fact, not the shop's voice
    (CASUAL_WRONG, True, 0.2),                    # "March 1" is not "March 14"
    (PLAIN_RIGHT, False, 0.5),                    # ran out of tokens before <|end|>
    (SHOP_RIGHT + " <|user|> thanks", True, 0.5),  # ran on into a user turn: neither voice nor ended
    ("", True, 0.0),
])
def test_gold_score_on_hand_written_replies(reply, ended, expected):
    assert gold_score(reply, RECORD, ended=ended) == pytest.approx(expected, abs=1e-12)


def test_weights_put_the_fact_before_the_voice_before_the_end():
    assert GOLD_WEIGHTS == {"fact": 0.5, "voice": 0.3, "ended": 0.2}
    assert gold_score(PLAIN_RIGHT, RECORD) > gold_score(SHOP_WRONG, RECORD)


def test_the_fact_comes_from_meta_or_from_an_rl_answer():
    assert record_fact(RECORD) == "March 14"
    rl = {"prompt": [{"role": "user", "content": "What is my total?"}], "answer": "23"}
    assert record_fact(rl) == "Total: $23"
    assert gold_score("Hi there! Total: $23. Happy shopping! - the Minimart team", rl) == pytest.approx(1.0)
    assert gold_score("Total: $230", rl) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="meta.fact"):
        record_fact({"prompt": "hi"})


def test_gold_prefers_every_chosen_reply_of_the_held_out_preference_pairs():
    """Both kinds of pair (voice: right fact, other voice; hallucination: wrong fact, shop voice)."""
    records = data.read_preferences(data.builtin("pref_val"))
    assert {r["meta"]["kind"] for r in records} == {"voice", "hallucination"}
    gaps = {round(gold_score(r["chosen"], r) - gold_score(r["rejected"], r), 9) for r in records}
    assert gaps == {0.3, 0.5}
