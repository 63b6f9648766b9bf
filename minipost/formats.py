"""Token rendering of the canonical SFT records of data.read_sft -> (input_ids, targets).

Targets are pre-shifted (docs/DESIGN.md §2): with s the full token list, input_ids = s[:-1],
targets = s[1:], and targets[t] = -100 where s[t+1] is not trained.

    {"messages"}                       render_chat(messages, mask)            (chat.py)
    {"messages", "completion_start"}   the same, and with mask "prompt" the tokens of
                                       messages[:completion_start] (the prompt, assistant turns
                                       included) carry no loss: TRL's completion-only loss
    {"text", "completion_start"}       plain text, no chat template:
                                         s = [bos] + encode(prompt) + encode(completion) + [eos]
                                       trained: the completion and eos (mask "prompt"), or
                                       every token (masks "template" and "none": plain text has
                                       no template tokens, so the two are the same)
    {"text"}                           s = [bos] + encode(text) + [eos], every token trained

Only tokenizer.encode and the bos/eos ids are used, so a text never yields a control id.

Deviation from TRL for the string prompt/completion form: TRL tokenizes prompt + completion
as one string and takes the first len(tokenize(prompt)) tokens as the prompt, which is off
when a token spans the boundary (it warns then). Here the two are encoded apart, so the
boundary is exact and the prompt's tokens are the same as when the prompt is alone (as at
generation time); the price is that a word split across the boundary is tokenized in two.
"""
from __future__ import annotations

from minipost.chat import IGNORE_INDEX, MASK_MODES, render_chat
from minipost.packing import text_document


def _tokens(messages, tokenizer) -> list[int]:
    """The full token list s of a conversation (render_chat without its shift)."""
    ids, targets = render_chat(messages, tokenizer, "none")
    return ids[:1] + targets


def chat_completion_tokens(messages, completion_start: int, tokenizer, mask: str = "prompt"):
    """A conversation whose messages[completion_start:] are the completion -> (input_ids, targets).

    messages: [{"role", "content"}, ...]; completion_start: 1 <= k < len(messages).
    With mask "prompt" only the completion's assistant turns are trained; with "template" or
    "none" the whole conversation is rendered as render_chat does.
    """
    if not 0 < completion_start < len(messages):
        raise ValueError(f"completion_start must lie in 1..{len(messages) - 1}, got {completion_start}")
    ids, targets = render_chat(messages, tokenizer, mask)
    if mask != "prompt":
        return ids, targets
    prompt = _tokens(messages[:completion_start], tokenizer)
    if _tokens(messages, tokenizer)[: len(prompt)] != prompt:
        raise ValueError("the chat template does not render the prompt's messages as a prefix of the "
                         "whole conversation, so the prompt's tokens cannot be told apart")
    # targets[t] is token s[t+1]: the prompt's tokens are s[1 .. len(prompt)-1].
    cut = len(prompt) - 1
    return ids, [IGNORE_INDEX] * cut + targets[cut:]


def text_completion_tokens(prompt: str, completion: str, tokenizer, mask: str = "prompt"):
    """Plain-text prompt and completion -> (input_ids, targets), both of length
    1 + len(encode(prompt)) + len(encode(completion)).

    s = [bos] + encode(prompt) + encode(completion) + [eos]; with mask "prompt" only the
    completion's tokens and eos are targets, with "template" or "none" every token.
    """
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    p, c = tokenizer.encode(prompt), tokenizer.encode(completion)
    ids, targets = text_document(p + c, tokenizer.bos_id, tokenizer.eos_id)
    if mask == "prompt":
        targets = [IGNORE_INDEX] * len(p) + targets[len(p):]
    return ids, targets


def sft_tokens(record: dict, tokenizer, mask: str = "prompt") -> tuple[list[int], list[int]]:
    """A canonical SFT record (data.read_sft) -> (input_ids, targets); the table above says
    which tokens are trained. mask: "prompt" | "template" | "none"."""
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    start = record.get("completion_start")
    if "messages" in record:
        if start is None:
            return render_chat(record["messages"], tokenizer, mask)
        return chat_completion_tokens(record["messages"], start, tokenizer, mask)
    text = record["text"]
    if start is None:
        return text_document(tokenizer.encode(text), tokenizer.bos_id, tokenizer.eos_id)
    return text_completion_tokens(text[:start], text[start:], tokenizer, mask)
