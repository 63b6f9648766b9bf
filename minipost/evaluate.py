"""Held-out metrics of each stage (docs/DESIGN.md §10), measured with greedy decoding.

    format_rate     a reply ends with <|end|> and contains no role token before it
    fact_accuracy   the reply states the fact asked about (rewards.states_fact)
    voice_rate      the reply is in the shop's voice (rewards.is_shop_voice)
    task_accuracy   the reply's "Total: $N" equals the order total (rewards.task_reward)
    general_accuracy  the reply to a general question (data/general.py) states its answer as
                    a word (rewards.states_fact): the forgetting check on a pretrained base

The judges are plain functions of text in rewards.py, so a learner can read exactly what
counts as right.
"""
from __future__ import annotations

import torch

from minipost import rewards
from minipost.chat import generation_prompt, reply_text
from minipost.generate import generate


@torch.no_grad()
def greedy_replies(model, tok, prompts: list[list[dict]], max_new_tokens: int = 64,
                   batch_size: int = 32) -> list[tuple[str, bool]]:
    """Greedy reply to each prompt (a list of messages) -> [(text, well_formed)]."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [generation_prompt(m, tok) for m in prompts[i: i + batch_size]]
        gen = generate(model, ids, max_new_tokens, stop_ids=[tok.end_id, tok.eos_id], pad_id=tok.pad_id,
                       with_logps=False)  # the replies are scored on their text
        for row, n in zip(gen.tokens.tolist(), gen.lengths.tolist()):
            out.append(reply_text(row[:n], tok))
    model.train(was_training)
    return out


def prompt_of(record: dict) -> list[dict]:
    """The messages up to the last user turn (SFT records hold the answer too)."""
    msgs = record["prompt"] if "prompt" in record else record["messages"]
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    return msgs[: last_user + 1]


def reply_metrics(model, tok, records: list[dict], max_new_tokens: int = 64) -> dict:
    """format_rate, fact_accuracy, voice_rate (and total_accuracy, fact_accuracy_by_intent)
    over records carrying meta.fact.

    fact_accuracy counts the questions whose answer is recorded in the order record (date,
    status, carrier, tracking code, price, item count, return deadline). An order's total
    is not in the record, it has to be computed: those questions are scored apart, as
    total_accuracy, the skill the RL stages train.
    """
    return judge_replies(greedy_replies(model, tok, [prompt_of(r) for r in records], max_new_tokens), records)


def judge_replies(replies: list[tuple[str, bool]], records: list[dict]) -> dict:
    """reply_metrics of given replies [(text, well_formed)], one per record carrying meta.fact."""
    n = max(len(records), 1)
    # One verdict per reply, grouped by question type; "total" is computed, the rest looked up.
    by_intent: dict[str, list[bool]] = {}
    for (text, _), r in zip(replies, records):
        by_intent.setdefault(r["meta"].get("intent", "unknown"), []).append(rewards.states_fact(text, r["meta"]["fact"]))
    looked_up = [hit for intent, hits in by_intent.items() if intent != "total" for hit in hits]
    out = {
        "format_rate": sum(ok for _, ok in replies) / n,
        "fact_accuracy": sum(looked_up) / max(len(looked_up), 1),
        "voice_rate": sum(rewards.is_shop_voice(t) for t, _ in replies) / n,
    }
    if by_intent.get("total"):
        out["total_accuracy"] = sum(by_intent["total"]) / len(by_intent["total"])
    # Per question type, so a learner can see which facts the model still gets wrong.
    out["fact_accuracy_by_intent"] = {k: sum(v) / len(v) for k, v in sorted(by_intent.items())}
    return out


def task_accuracy(model, tok, records: list[dict], max_new_tokens: int = 48) -> float:
    """Fraction of RL prompts whose greedy reply gives the right total."""
    replies = greedy_replies(model, tok, [r["prompt"] for r in records], max_new_tokens)
    return sum(rewards.task_reward(t, r["answer"]) for (t, _), r in zip(replies, records)) / max(len(records), 1)


def general_accuracy(model, tok, records: list[dict], max_new_tokens: int = 24) -> dict:
    """general_accuracy (and general_accuracy_by_kind) over {"prompt", "answer", "kind"}
    records: a greedy reply is right when it states the answer as a word, so "Paris." and
    "The capital is Paris" count, "Parisian" and "17" for 7 do not (rewards.states_fact)."""
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in records]
    replies = greedy_replies(model, tok, prompts, max_new_tokens)
    by_kind: dict[str, list[bool]] = {}
    for (text, _), r in zip(replies, records):
        by_kind.setdefault(r["kind"], []).append(rewards.states_fact(text, r["answer"]))
    hits = [hit for kind_hits in by_kind.values() for hit in kind_hits]
    return {"general_accuracy": sum(hits) / max(len(hits), 1),
            "general_accuracy_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}
