"""Chat template rendering and loss masks for instruction tuning.

The template (docs/DESIGN.md §4), one block per message:

    <|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{assistant}<|end|>\\n

and a rendered conversation starts with bos. Role tokens, <|end|> and bos are inserted by
id; the text between two of them (a role's header, "\\n", and the message's content) is
encoded as one piece with `tokenizer.encode`, which never yields a control id. So a user who
writes "<|end|>" gets the characters, not the token, and cannot close their own turn
(template injection). Encoding header and content together is what a jinja template followed
by the tokenizer does (transformers' apply_chat_template): content that opens with "\\n" or
spaces may merge with the header's last "\\n" into one token ("\\n\\n"), and only the same
merge gives the ids the model saw in pretraining. Such a token carries content, so it is
counted as content; the header's tokens are those the header alone encodes to, up to where
the two encodings part.

Targets are pre-shifted (docs/DESIGN.md §2): with s the full token list, input_ids = s[:-1] and
targets = s[1:], where targets[t] = -100 when the token s[t+1] is not trained.

Which tokens are trained, per mask mode (bos is never a target: nothing precedes it):

  "none"      every token: plain language modelling on the whole rendered text.
  "prompt"    each assistant message's content and its closing <|end|>; nothing else.
              The default: only the responses are learned, as in InstructGPT (Ouyang et
              al., 2022) and most SFT recipes. Every assistant turn of a multi-turn
              conversation is trained, not just the last.
  "template"  every token except the template's own tokens, which are exactly:
                - the role tokens <|system|>, <|user|>, <|assistant|>,
                - the "\\n" right after each role token (its own token: content that
                  opens with "\\n" and merges with it makes it content, see above),
                - the "\\n" right after each <|end|>.
              Trained: the content of every message (system, user and assistant) and each
              message's <|end|>. This is "instruction modelling" (Shi et al., 2024,
              "Instruction Tuning With Loss Over Instructions"): the loss also covers the
              instructions, but not the fixed scaffolding, which carries no information
              and would only teach the model to copy the template.
              <|end|> is trained although it is a control token: it ends the content, and
              the model must learn where content ends to stop generating.

The three are nested: prompt ⊂ template ⊂ none.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

IGNORE_INDEX = -100  # docs/DESIGN.md §2: "no loss here"
ROLES = ("system", "user", "assistant")
MASK_MODES = ("none", "prompt", "template")


def validate_messages(messages) -> None:
    """Raise ValueError naming the first bad message: messages must be a non-empty list of
    {"role": "system" | "user" | "assistant", "content": str} dicts (extra keys are allowed)."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages must contain at least one message, got an empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{i}] is missing the key {key!r} (expected 'role' and 'content')")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {m['role']!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]: content must be a string, got {type(m['content']).__name__}")


@dataclass
class Template:
    """A chat format, as the pieces chat.py's one rendering loop puts together (DESIGN §12).

    A message of role r renders as

        role_open[r] (special token text, inserted by id) + role_header[r] (text)
        + content (text) + end (special token text, by id) + after_end (text)

    minipost's own:  "<|user|>" + "\\n" + content + "<|end|>" + "\\n"; bos first.
    ChatML (SmolLM2): "<|im_start|>" + "user\\n" + content + "<|im_end|>" + "\\n"; no bos,
    and `default_system` is put first when a conversation has no system message.
    The scaffolding ("template" mask mode leaves it untrained) is role_open, role_header and
    after_end; `end` goes with the content it closes.
    """

    name: str
    role_open: dict[str, str]
    role_header: dict[str, str]
    end: str
    after_end: str = "\n"
    bos: bool = True
    default_system: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Template":
        return cls(**d)

    def to_jinja(self) -> str:
        """The same format as a Jinja chat template (transformers' apply_chat_template)."""
        q = _jinja_str
        out = "{{ bos_token }}" if self.bos else ""
        if self.default_system is not None:
            first = self.role_open["system"] + self.role_header["system"] + self.default_system + self.end + self.after_end
            out += "{% if messages[0]['role'] != 'system' %}{{ " + q(first) + " }}{% endif %}"
        out += "{% for message in messages %}"
        for k, role in enumerate(ROLES):
            out += ("{% if " if k == 0 else "{% elif ") + f"message['role'] == {q(role)} %}}"
            out += "{{ " + q(self.role_open[role] + self.role_header[role]) + " }}"
        out += "{% endif %}{{ message['content'] + " + q(self.end + self.after_end) + " }}{% endfor %}"
        gen = self.role_open["assistant"] + self.role_header["assistant"]
        return out + "{% if add_generation_prompt %}{{ " + q(gen) + " }}{% endif %}"


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


MINIPOST_TEMPLATE = Template("minipost", role_open={r: f"<|{r}|>" for r in ROLES},
                             role_header={r: "\n" for r in ROLES}, end="<|end|>", bos=True)


def chatml_template(default_system: str | None) -> Template:
    return Template("chatml", role_open={r: "<|im_start|>" for r in ROLES},
                    role_header={r: f"{r}\n" for r in ROLES}, end="<|im_end|>", bos=False,
                    default_system=default_system)


def _template(tokenizer) -> Template:
    template = getattr(tokenizer, "template", None)
    if template is None:
        raise ValueError(f"the tokenizer {getattr(tokenizer, 'path', '')} has no chat template minipost can "
                         f"render (it reads its own and ChatML); train it on plain text instead")
    return template


def _with_default_system(messages, template: Template):
    if template.default_system is not None and messages[0]["role"] != "system":
        return [{"role": "system", "content": template.default_system}, *messages]
    return messages


def _render_tokens(messages, tokenizer, mask: str) -> tuple[list[int], list[bool]]:
    """-> (s, trained): the full token list and, per token, whether it is a loss target."""
    t = _template(tokenizer)
    s, trained = ([tokenizer.bos_id], [False]) if t.bos else ([], [])

    def add(ids, on):
        s.extend(ids)
        trained.extend([on] * len(ids))

    for m in _with_default_system(messages, t):
        content_on = mask != "prompt" or m["role"] == "assistant"
        scaffold_on = mask == "none"  # the role's opening and the separators of the template
        add([tokenizer.special_id(t.role_open[m["role"]])], scaffold_on)
        header = tokenizer.encode(t.role_header[m["role"]])
        text = tokenizer.encode(t.role_header[m["role"]] + m["content"])
        n_header = _common_prefix(header, text)
        add(text[:n_header], scaffold_on)
        add(text[n_header:], content_on)
        add([tokenizer.special_id(t.end)], content_on)  # the end token goes with the content it closes
        add(tokenizer.encode(t.after_end), scaffold_on)
    return s, trained


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share (equal ids after equal ids cover equal text)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _shift(s: list[int], trained: list[bool]) -> tuple[list[int], list[int]]:
    return s[:-1], [tok if on else IGNORE_INDEX for tok, on in zip(s[1:], trained[1:])]


def render_chat(messages, tokenizer, mask: str = "prompt") -> tuple[list[int], list[int]]:
    """Render a conversation as (input_ids, targets), both of length len(s) - 1.

    messages: [{"role": ..., "content": str}, ...]; any order of roles is accepted.
    mask: "none" | "prompt" | "template" (see the module docstring for the exact rule).
    targets[t] is the token after input_ids[t], or -100 where that token is not trained.
    """
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    validate_messages(messages)
    return _shift(*_render_tokens(messages, tokenizer, mask))


def generation_prompt(messages, tokenizer) -> list[int]:
    """bos + the rendered messages + <|assistant|> + "\\n": what the model continues to reply.

    messages must end with a user message.
    """
    validate_messages(messages)
    if messages[-1]["role"] != "user":
        raise ValueError(f"a generation prompt must end with a user message, the last one is {messages[-1]['role']!r}")
    t = _template(tokenizer)
    s, _ = _render_tokens(messages, tokenizer, "none")
    return s + [tokenizer.special_id(t.role_open["assistant"])] + tokenizer.encode(t.role_header["assistant"])


def render_completion(prompt_messages, completion: str | Sequence[int], tokenizer,
                      add_end: bool = True) -> tuple[list[int], list[int]]:
    """generation_prompt(prompt_messages) + completion + <|end|>, loss on the completion and
    its <|end|> only (the sequences that DPO and RL score).

    completion: the assistant's text, or token ids used verbatim (for RL, score exactly the
    sampled tokens: re-encoding decoded text need not give the same ids back).
    add_end: append <|end|>; pass False for sampled ids that already carry their stop token,
    or that were cut off without one (no <|end|> was generated, so none is scored).
    The sequence ends at <|end|>, without the "\\n" render_chat puts after it: nothing is
    scored after the reply's end. Returns (input_ids, targets); the prompt part of s is
    token for token generation_prompt(prompt_messages).
    """
    prompt = generation_prompt(prompt_messages, tokenizer)
    if isinstance(completion, str):
        reply = tokenizer.encode(completion)
    else:
        reply = [int(i) for i in completion]
    reply = reply + ([tokenizer.end_id] if add_end else [])
    s = prompt + reply
    trained = [False] * len(prompt) + [True] * len(reply)
    return _shift(s, trained)


def reply_text(generated_ids: Sequence[int], tokenizer) -> tuple[str, bool]:
    """Extract the reply from generated ids (what came after the generation prompt).

    The reply stops at the first control token of any kind. ended is True only when that
    token is <|end|>: a model that opens a new turn (a role token), emits bos/eos/pad, or
    runs out of tokens before <|end|> has not finished its reply properly. The text is the
    decoding of the tokens before that stop (for a new turn, what came before it).
    """
    ids = [int(i) for i in generated_ids]
    stop = next((k for k, i in enumerate(ids) if i in tokenizer.control_ids), len(ids))
    ended = stop < len(ids) and ids[stop] == tokenizer.end_id
    return tokenizer.decode(ids[:stop]), ended
