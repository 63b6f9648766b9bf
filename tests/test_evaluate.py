"""The held-out metrics count what the issue says they count (generation is faked here)."""
from minipost import evaluate as ev

SIGN = "Happy shopping! - the Minimart team"


def rec(intent, fact):
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "meta": {"intent": intent, "fact": fact}}


def test_reply_metrics_scores_lookups_and_totals_apart(monkeypatch):
    records = [rec("tracking", "PC-12345"), rec("carrier", "ParcelCo"), rec("status", "shipped"),
               rec("total", "Total: $30"), rec("total", "Total: $7")]
    replies = [(f"Hi there! Your code is PC-12345. {SIGN}", True),   # right, shop voice
               ("It goes with NorthLine.", True),                     # wrong fact
               ("shipped", False),                                    # right, but no <|end|>
               ("Total: $30", True),                                  # right total
               (f"Hi there! Total: $8. {SIGN}", True)]                # wrong total
    monkeypatch.setattr(ev, "greedy_replies", lambda model, tok, prompts, n: replies[:len(prompts)])
    m = ev.reply_metrics(None, None, records)
    assert m["fact_accuracy"] == 2 / 3          # lookups only: tracking and status right
    assert m["total_accuracy"] == 1 / 2
    assert m["format_rate"] == 4 / 5
    assert m["voice_rate"] == 2 / 5
    assert m["fact_accuracy_by_intent"] == {"carrier": 0.0, "status": 1.0, "total": 0.5, "tracking": 1.0}


def test_task_accuracy_uses_the_total_marker(monkeypatch):
    records = [{"prompt": [{"role": "user", "content": "q"}], "answer": "12"},
               {"prompt": [{"role": "user", "content": "q"}], "answer": "5"}]
    monkeypatch.setattr(ev, "greedy_replies", lambda model, tok, prompts, n: [("Total: $12", True), ("$5", True)])
    assert ev.task_accuracy(None, None, records) == 0.5
