"""--stage chat: the streamed greedy reply equals a greedy generate call; /reset and /exit on stdin;
--compare; adapter runs."""
import io
import shutil
import sys

import pytest
import torch

from minipost import checkpoint, cli, peft
from minipost.chat import generation_prompt, reply_text
from minipost.config import preset
from minipost.generate import generate
from minipost.model import GPT
from minipost.stages.chat import load_chat_model
from minipost.stages.common import load_stage_model

QUESTION = "where is my kettle"


def save_run(d, model, tok):
    with torch.no_grad():  # large random weights: varied replies, not one token repeated
        for p in model.parameters():
            p.normal_(0, 0.3)
    checkpoint.save_model(model, d, stage="sft")
    shutil.copyfile(tok.path, d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_tokenizer):
    """Two tiny full runs and a prefix-tuning adapter run on the first."""
    out = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        out.append(save_run(tmp_path_factory.mktemp(f"run{seed}"), GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)),
                            small_tokenizer))
    model, tok, _ = load_stage_model(out[0])
    peft.apply_peft(model, "prefix", n_virtual=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)  # a trained-looking prefix, so it changes the replies
    adapter = tmp_path_factory.mktemp("adapter")
    peft.save_adapter(model, adapter)
    checkpoint.write_json({"model": model.cfg.to_dict(), "stage": "sft", "peft": "prefix", "base": str(out[0])},
                          adapter / "config.json")
    shutil.copyfile(tok.path, adapter / "tokenizer.model")
    return out + [adapter]


def greedy(run, messages, n):
    model, tok = load_chat_model(run)
    gen = generate(model, [generation_prompt(messages, tok)], n, stop_ids=[tok.end_id, tok.eos_id], pad_id=tok.pad_id)
    return reply_text(gen.tokens[0, : gen.lengths[0]].tolist(), tok)[0]


def chat(args, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.run(["--stage", "chat", "--max-new-tokens", "24", *args])["replies"]


@pytest.mark.parametrize("which", [0, 2], ids=["full", "prefix-adapter"])
def test_prompt_equals_greedy_generate(runs, which, capsys):
    run = runs[which]
    replies = chat(["--init", str(run), "--prompt", QUESTION])
    want = greedy(run, [{"role": "user", "content": QUESTION}], 24)
    assert len(set(want)) > 3  # a varied reply, so the equality says something
    assert replies == {run.name: [want]}
    assert capsys.readouterr().out == want + "\n"  # what was streamed is the reply


def test_adapter_changes_the_reply(runs):
    q = [{"role": "user", "content": QUESTION}]
    assert greedy(runs[2], q, 24) != greedy(runs[0], q, 24)


def test_multi_turn_reset_and_exit(runs, monkeypatch, capsys):
    run = str(runs[0])
    system = "you are the shop"
    replies = chat(["--init", run, "--system", system], "thanks\n\n/reset\nthe order\n/exit\nnever read\n", monkeypatch)
    first = greedy(run, [{"role": "system", "content": system}, {"role": "user", "content": "thanks"}], 24)
    # After /reset the history is gone: the second answer is the answer to a fresh conversation.
    second = greedy(run, [{"role": "system", "content": system}, {"role": "user", "content": "the order"}], 24)
    assert replies[runs[0].name] == [first, second]
    assert "conversation reset" in capsys.readouterr().err


def test_history_is_kept_between_turns(runs, monkeypatch):
    run = str(runs[0])
    replies = chat(["--init", run], "thanks\nthe order\n", monkeypatch)  # ends at end of input
    first = greedy(run, [{"role": "user", "content": "thanks"}], 24)
    history = [{"role": "user", "content": "thanks"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "the order"}]
    assert replies[runs[0].name] == [first, greedy(run, history, 24)]


def test_compare_answers_with_both(runs, capsys):
    replies = chat(["--init", str(runs[0]), "--compare", str(runs[1]), "--prompt", QUESTION])
    q = [{"role": "user", "content": QUESTION}]
    a, b = greedy(runs[0], q, 24), greedy(runs[1], q, 24)
    assert replies == {runs[0].name: [a], runs[1].name: [b]}
    assert capsys.readouterr().out == f"[{runs[0].name}] {a}\n[{runs[1].name}] {b}\n"


def test_sampling_is_seeded(runs):
    args = ["--init", str(runs[0]), "--prompt", QUESTION, "--temperature", "1.0", "--top-p", "0.9"]
    assert chat(args + ["--seed", "5"]) == chat(args + ["--seed", "5"])



@pytest.fixture(scope="module")
def long_runs(tmp_path_factory, small_tokenizer):
    """Two tiny full runs with a context long enough for an order record in the small tokenizer."""
    out = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        model = GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size, max_seq_len=1024))
        out.append(save_run(tmp_path_factory.mktemp(f"long{seed}"), model, small_tokenizer))
    return out


def test_held_out_questions_are_answered_by_every_run_from_their_own_context(long_runs, capsys):
    from minipost.evaluate import prompt_of
    from minipost.stages.chat import held_out_questions

    replies = chat(["--init", str(long_runs[0]), "--compare", str(long_runs[1]), "--held-out", "2"])
    questions = held_out_questions(2)
    assert len(questions) == 2 and questions[0] != questions[1]
    for run in long_runs:  # each question is a fresh conversation: its system message and order record
        assert replies[run.name] == [greedy(run, prompt_of(q), 24) for q in questions]
    assert replies[long_runs[0].name] != replies[long_runs[1].name]  # two models, two sets of replies
    out = capsys.readouterr().out
    assert out.count("--- held-out question") == 2 and questions[1]["messages"][1]["content"] in out
