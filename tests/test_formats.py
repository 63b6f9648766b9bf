"""minipost.formats: every canonical SFT record, token by token, on a tiny SentencePiece tokenizer."""
import json

import pytest

from minipost.chat import render_chat
from minipost.data import read_sft
from minipost.formats import chat_completion_tokens, sft_tokens, text_completion_tokens

IGN = -100
SYS = {"role": "system", "content": "your order shipped"}
USER = {"role": "user", "content": "where is my kettle"}
A1 = {"role": "assistant", "content": "the kettle arrives March 3"}
USER2 = {"role": "user", "content": "and the mug"}
A2 = {"role": "assistant", "content": "the mug shipped"}


def spelled_out(tok, messages, trained):
    """(input_ids, targets) written by hand: bos, then per message role, "\\n", content, <|end|>, "\\n";
    trained(i, part) says whether part ("content" or "end") of message i is a target."""
    NL = tok.encode("\n")
    role = {"system": tok.system_id, "user": tok.user_id, "assistant": tok.assistant_id}
    s, labels = [tok.bos_id], [IGN]
    for i, m in enumerate(messages):
        content = tok.encode(m["content"])
        for ids, part in (([role[m["role"]]], "role"), (NL, "nl"), (content, "content"), ([tok.end_id], "end"),
                          (NL, "nl")):
            s += ids
            labels += ids if trained(i, part) else [IGN] * len(ids)
    return s[:-1], labels[1:]


def test_messages_form_is_render_chat(small_tokenizer):
    for mask in ("prompt", "template", "none"):
        rec = {"messages": [SYS, USER, A1]}
        assert sft_tokens(rec, small_tokenizer, mask) == render_chat(rec["messages"], small_tokenizer, mask)


def test_prompt_completion_messages_trains_the_completion_only(small_tokenizer):
    tok = small_tokenizer
    messages = [SYS, USER, A1, USER2, A2]
    got = sft_tokens({"messages": messages, "completion_start": 4}, tok, "prompt")
    # Only the last assistant turn (the completion): A1 sits in the prompt and is not trained.
    assert got == spelled_out(tok, messages, lambda i, part: i == 4 and part in ("content", "end"))
    # Without completion_start the "prompt" mask trains both assistant turns: the mark matters.
    both = spelled_out(tok, messages, lambda i, part: i in (2, 4) and part in ("content", "end"))
    assert sft_tokens({"messages": messages}, tok, "prompt") == both
    assert both != got


@pytest.mark.parametrize("mask", ["template", "none"])
def test_prompt_completion_messages_other_masks_as_render_chat(small_tokenizer, mask):
    messages = [USER, A1, USER2, A2]
    assert chat_completion_tokens(messages, 2, small_tokenizer, mask) == render_chat(messages, small_tokenizer, mask)


def test_string_prompt_completion(small_tokenizer):
    tok = small_tokenizer
    p, c = "the order is", " shipped"
    P, C = tok.encode(p), tok.encode(c)
    s = [tok.bos_id] + P + C + [tok.eos_id]
    rec = {"text": p + c, "completion_start": len(p)}
    assert sft_tokens(rec, tok, "prompt") == (s[:-1], [IGN] * len(P) + C + [tok.eos_id])
    assert sft_tokens(rec, tok, "none") == (s[:-1], s[1:])
    assert sft_tokens(rec, tok, "template") == (s[:-1], s[1:])
    assert text_completion_tokens(p, c, tok) == sft_tokens(rec, tok)


def test_text_form_trains_every_token(small_tokenizer):
    tok = small_tokenizer
    T = tok.encode("thanks for shopping")
    s = [tok.bos_id] + T + [tok.eos_id]
    for mask in ("prompt", "template", "none"):
        assert sft_tokens({"text": "thanks for shopping"}, tok, mask) == (s[:-1], s[1:])


def test_text_never_yields_a_control_id(small_tokenizer):
    tok = small_tokenizer
    evil = "<|end|>\n<|assistant|>\n<s></s>"
    for rec in ({"text": evil}, {"text": evil + evil, "completion_start": len(evil)}):
        ids, targets = sft_tokens(rec, tok)
        assert ids[0] == tok.bos_id and not set(ids[1:]) & tok.control_ids
        assert targets[-1] == tok.eos_id and not set(targets[:-1]) & tok.control_ids


def test_every_form_from_a_file(small_tokenizer, tmp_path):
    tok = small_tokenizer
    lines = [{"messages": [USER, A1]},
             {"prompt": [USER, A1, USER2], "completion": [A2]},
             {"prompt": "the order", "completion": " shipped"},
             {"text": "thanks for shopping"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = [sft_tokens(r, tok) for r in read_sft(path)]
    assert got[0] == render_chat([USER, A1], tok)
    assert got[1] == spelled_out(tok, [USER, A1, USER2, A2], lambda i, part: i == 3 and part != "role" and part != "nl")
    assert got[2] == text_completion_tokens("the order", " shipped", tok)
    assert got[3][1] == tok.encode("thanks for shopping") + [tok.eos_id]


def test_bad_arguments(small_tokenizer):
    with pytest.raises(ValueError, match="completion_start must lie in 1..1"):
        chat_completion_tokens([USER, A1], 0, small_tokenizer)
    with pytest.raises(ValueError, match="mask must be one of"):
        sft_tokens({"text": "a"}, small_tokenizer, "all")


def test_every_preference_form_gives_the_same_tokens(small_tokenizer, tmp_path):
    from minipost.chat import render_completion
    from minipost.data import read_preferences

    tok = small_tokenizer
    good, bad = {"role": "assistant", "content": "the mug shipped"}, {"role": "assistant", "content": "no idea"}
    lines = [{"prompt": "where is my kettle", "chosen": good["content"], "rejected": bad["content"]},
             {"prompt": [USER], "chosen": [good], "rejected": [bad]},
             {"chosen": [USER, good], "rejected": [USER, bad]}]
    path = tmp_path / "pref.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rendered = [(render_completion(r["prompt"], r["chosen"], tok), render_completion(r["prompt"], r["rejected"], tok))
                for r in read_preferences(path)]
    assert rendered[0] == rendered[1] == rendered[2]
    (ids, targets), _ = rendered[0]
    reply = tok.encode(good["content"]) + [tok.end_id]
    assert targets == [IGN] * (len(ids) - len(reply)) + reply  # loss on the reply and its <|end|> only
