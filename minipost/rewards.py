"""Verifiable reward functions and judges for the built-in Minimart tasks.

Everything here is a pure function of text: no model, no randomness, so a reward is
reproducible and a unit test can pin it down exactly. This is the "verifiable reward"
idea of RL from verifiable rewards (Lambert et al., 2024, "Tulu 3: Pushing Frontiers in
Open Language Model Post-Training", section on RLVR; also the rule-based accuracy and
format rewards of DeepSeek-AI, 2025, "DeepSeek-R1"):

    reward(completion) = task_reward(completion, answer) + format_reward(completion)
    task_reward        = 1 if the number after the last "Total: $" equals the answer else 0
    format_reward      = bonus (0.1 by default) if the completion holds exactly one
                         well-formed "Total: $N" marker, else 0

Deviation from R1's format reward: R1 rewards <think>/<answer> tags; the Minimart task
has no reasoning tags, so the "format" is the fixed answer marker `Total: $N` that the
SFT data (data/make_data.py) teaches.

The two judges used by the evaluation of SFT and DPO are also here, since they define
what "the shop's voice" and "states the fact" mean for the data:

    is_shop_voice(reply): opens with "Hi there!" and ends with
                          "Happy shopping! - the Minimart team" (whitespace ignored)
    states_fact(reply, fact): the fact appears in the reply (case and whitespace
                          normalised), not glued to a longer word or number
"""

from __future__ import annotations

import re

# The shop's voice (see data/README.md). No other reply style in the data uses either phrase.
SHOP_OPENING = "Hi there!"
SHOP_SIGNOFF = "Happy shopping! - the Minimart team"

# Chat control tokens of the template in docs/DESIGN.md §4 (same strings as minipost/tokenizer.py).
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# "Total:" not glued to a preceding letter (so "Subtotal: $5" is not a marker).
_MARKER = re.compile(r"(?<![A-Za-z])Total:")
# A well-formed marker: exactly "Total: $" then a whole number of dollars. A number followed
# by a decimal or thousands part ("$23.50", "$1,200") is not a whole-dollar total, so it is
# not well-formed rather than being misread as 23 or 1.
_TOTAL = re.compile(r"(?<![A-Za-z])Total: \$(\d+)(?!\d|[.,]\d)")


def extract_total(text: str) -> int | None:
    """The whole-dollar amount N of the last well-formed `Total: $N` in `text`, else None.

    The marker is case-sensitive and has exactly one space ("Total: $23"). Malformed
    markers ("Total: 23", "Total: $23.50", "total: $23") are skipped, so the result is the
    last well-formed one. Examples: "Total: $5 ... Total: $23" -> 23; "no total" -> None.
    """
    found = _TOTAL.findall(text)
    if not found:
        return None
    return int(found[-1])


def task_reward(completion: str, answer: str) -> float:
    """1.0 if extract_total(completion) == int(answer), else 0.0.

    `answer` is the RL record's "answer" field, a decimal string such as "23". A completion
    without a well-formed total scores 0.0.
    """
    got = extract_total(completion)
    return 1.0 if got is not None and got == int(answer) else 0.0


def format_reward(completion: str, bonus: float = 0.1) -> float:
    """`bonus` if the completion contains exactly one "Total:" marker and it is well-formed
    (`Total: $N`, whole dollars), else 0.0.

    The default 0.1 is a small shaping term: it is one tenth of a correct answer, so a
    policy can never prefer a well-formatted wrong total to a correct one (0.1 < 1.0),
    while a model that has not yet learnt the marker still gets a gradient towards it.
    `bonus` must lie in [0, 1]; the return value is in [0, 1].
    """
    if not 0.0 <= bonus <= 1.0:
        raise ValueError(f"format_reward: bonus must be in [0, 1], got {bonus}")
    if len(_MARKER.findall(completion)) == 1 and len(_TOTAL.findall(completion)) == 1:
        return float(bonus)
    return 0.0


def _squash(text: str) -> str:
    return "".join(text.split())


def is_shop_voice(reply: str) -> bool:
    """True if `reply` is in the Minimart voice: it starts with "Hi there!", ends with
    "Happy shopping! - the Minimart team", and has some text in between.

    Whitespace is ignored when comparing (line breaks or double spaces do not matter);
    case and punctuation do matter, because the voice is a fixed house style.
    """
    s = _squash(reply)
    head, tail = _squash(SHOP_OPENING), _squash(SHOP_SIGNOFF)
    return s.startswith(head) and s.endswith(tail) and len(s) > len(head) + len(tail)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def states_fact(reply: str, fact: str) -> bool:
    """True if `fact` (e.g. "March 14", "PC-55812", "$6", "3 items", "Total: $23") is stated
    in `reply`.

    Both strings are lower-cased and runs of whitespace become one space. An occurrence
    counts only if it is not part of a longer token: when the fact starts (ends) with a
    letter or digit, the character before (after) it must not be a letter or digit. So
    "$6" is not stated by "$60", "March 1" not by "March 14", "3 items" not by "13 items".
    """
    f = _normalise(fact)
    if not f:
        raise ValueError("states_fact: fact must be a non-empty string")
    r = _normalise(reply)
    start = r.find(f)
    while start != -1:
        end = start + len(f)
        ok_left = not (f[0].isalnum() and start > 0 and r[start - 1].isalnum())
        ok_right = not (f[-1].isalnum() and end < len(r) and r[end].isalnum())
        if ok_left and ok_right:
            return True
        start = r.find(f, start + 1)
    return False


def is_well_formed_reply(reply_text: str) -> bool:
    """True if a generated reply (decoded text up to, not including, its closing <|end|>)
    is non-empty and contains no chat control marker, i.e. the model neither produced an
    empty turn nor ran on into another role's turn.
    """
    if not reply_text.strip():
        return False
    return not any(m in reply_text for m in ROLE_MARKERS)


# ----------------------------------------------------------------------------- the gold judge
# RLHF with a learned reward model (stages with --reward-model) optimises a proxy; these
# judges, combined into one number, are the "gold" it is checked against (Gao et al. 2023,
# "Scaling laws for reward model overoptimization": proxy reward up, gold reward down is
# overoptimisation). The gold score is logged, never trained on.

GOLD_WEIGHTS = {"fact": 0.5, "voice": 0.3, "ended": 0.2}


def record_fact(record: dict) -> str:
    """The fact a reply to `record` must state: record["meta"]["fact"] (SFT and preference
    records of the built-in data), else "Total: $<answer>" for an RL record {"prompt", "answer"}."""
    fact = record.get("meta", {}).get("fact") if isinstance(record.get("meta"), dict) else None
    if isinstance(fact, str) and fact.strip():
        return fact
    if "answer" in record:
        return f"Total: ${record['answer']}"
    raise ValueError("gold_score: the record needs meta.fact (a string) or an 'answer', "
                     f"got keys {sorted(record)}")


def gold_score(reply: str, record: dict, ended: bool = True) -> float:
    """The gold judge of a reply, in [0, 1]:

        gold = 0.5 * states_fact(reply, fact) + 0.3 * is_shop_voice(reply)
             + 0.2 * (ended and is_well_formed_reply(reply))

    reply: the reply text (chat.reply_text); record: its prompt's record (record_fact says
    which fact); ended: whether generation stopped at <|end|> (reply_text's second value).
    Why these weights: the fact outweighs the voice, so a plain reply with the right fact
    (0.7) beats a hallucination in the shop's voice (0.5), the order of both kinds of
    preference pair in the data (voice pairs differ by 0.3, hallucination pairs by 0.5);
    ending properly is the smallest term, a format requirement that cannot make up for
    content, yet keeps a reply that runs on into another turn below one that stops.
    """
    w = GOLD_WEIGHTS
    return (w["fact"] * states_fact(reply, record_fact(record)) + w["voice"] * is_shop_voice(reply)
            + w["ended"] * (ended and is_well_formed_reply(reply)))
