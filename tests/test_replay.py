"""Self-replay (minipost/replay.py): the starting model's own replies, kept when they ended,
written once and read back on --resume; the replay pool shares nothing with the held-out
general questions."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from minipost import checkpoint, cli, replay
from minipost.config import preset
from minipost.model import GPT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
import general  # noqa: E402


@pytest.fixture
def base(tmp_path, small_tokenizer):
    """A tiny random base model with the small tokenizer, as a run directory."""
    d = tmp_path / "base"
    torch.manual_seed(0)
    checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), d, stage="pretrain")
    shutil.copyfile(small_tokenizer.path, d / "tokenizer.model")
    return d


def test_replay_pool_holds_no_held_out_question_nor_answer():
    held_out = general.general_questions("val") + general.general_questions("test")
    prompts = [r["prompt"] for r in general.replay_prompts()]
    assert len(prompts) == len(set(prompts)) == 48
    for record in held_out:
        assert record["prompt"] not in prompts
        answer = re.compile(rf"(?<![\w]){re.escape(record['answer'])}(?![\w])", re.IGNORECASE)
        assert not [p for p in prompts if answer.search(p)], record


def test_only_replies_that_ended_are_kept(monkeypatch):
    asked = [[{"role": "user", "content": q}] for q in ("a?", "b?", "c?", "d?")]
    monkeypatch.setattr(replay, "greedy_replies",
                        lambda model, tok, prompts, n: [("A.", True), ("cut off", False), ("  ", True), ("D.", True)])
    records = replay.replay_conversations(None, None, asked)
    assert records == [{"messages": [*asked[0], {"role": "assistant", "content": "A."}]},
                       {"messages": [*asked[3], {"role": "assistant", "content": "D."}]}]


def test_written_once_and_read_back_on_resume(tmp_path):
    path, calls = tmp_path / "run" / "self_replay.jsonl", []
    rec = [{"messages": [{"role": "user", "content": "hé?"}, {"role": "assistant", "content": "oui"}]}]

    def make():
        calls.append(1)
        return rec

    assert replay.load_or_make(path, False, make) == rec and len(calls) == 1
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rec
    assert replay.load_or_make(path, True, lambda: pytest.fail("a resumed run must not regenerate")) == rec
    assert replay.load_or_make(path, False, make) == rec and len(calls) == 2  # a fresh run makes them anew
    assert [p.name for p in path.parent.iterdir()] == ["self_replay.jsonl"]  # no temporary file left


def test_sft_stage_mixes_the_replies_in(tmp_path, base, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    seen = []

    def fake(model, tok, asked, max_new_tokens=64):  # the tiny random model's replies never end
        seen.append([m[-1]["content"] for m in asked])
        return [{"messages": [*m, {"role": "assistant", "content": "a kept reply"}]} for m in asked]

    monkeypatch.setattr(replay, "replay_conversations", fake)
    out = tmp_path / "sft"
    args = ["--stage", "sft", "--init", str(base), "--out", str(out), "--preset", "tiny", "--steps", "1",
            "--batch-size", "2", "--max-eval", "2", "--self-replay", "0.25", "--replay-file", str(prompts)]
    cli.run(args)
    assert seen == [["question 0", "question 1", "question 2"]]
    written = [json.loads(line) for line in (out / "self_replay.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in written] == seen[0]


def test_no_reply_kept_is_a_clear_error(tmp_path, base, monkeypatch):
    monkeypatch.setattr(replay, "replay_conversations", lambda *a, **kw: [])
    with pytest.raises(SystemExit, match="--self-replay: none of the starting model's 48 replies ended within 64"):
        cli.run(["--stage", "sft", "--init", str(base), "--out", str(tmp_path / "sft"), "--preset", "tiny",
                 "--steps", "1", "--batch-size", "2", "--max-eval", "2", "--self-replay", "0.3"])
