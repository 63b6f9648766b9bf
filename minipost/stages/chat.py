"""Chat with a trained model (`--stage chat --init RUN`): multi-turn, streaming the reply
token by token as it is sampled.

    python train.py --stage chat --init out/dpo                      # interactive
    python train.py --stage chat --init out/dpo --prompt "Where is my order?"   # one answer
    python train.py --stage chat --init out/sft --compare out/dpo    # both models, turn by turn
    python train.py --stage chat --init smollm2 --compare out/smol/sft out/smol/dpo --held-out 3
                                          # three models answer the same 3 held-out questions

Each user line is added to the conversation, the model's generation prompt (chat.py) is
sampled from, and its reply joins the conversation for the next turn. Commands: /reset
(forget the conversation, keep --system), /exit (or end of input). Replies go to stdout and
everything else (the "you>" marker, notes) to stderr, so `... < questions.txt > replies.txt`
works as a script.

The sampler is generate.generate's loop for one row: the prompt runs once into a KV cache,
then one token per step (generate.sample_next: greedy at --temperature 0, the default and
what the evaluation does, else softmax(logits / T) cut to the --top-p nucleus). A reply ends
at the first control token (<|end|>, a role token, eos), as chat.reply_text reads one, so a
greedy reply here is the text of a greedy generate call (tested). Text is printed once it is
whole: a character spread over byte-fallback tokens shows when its last byte arrives.

A run with an adapter (LoRA, prefix, prompt, bottleneck) is loaded as trained, on top of
its base, without merging. When the conversation outgrows the model's context, the oldest
exchanges are dropped (the system message stays).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from minipost import checkpoint, pretrained
from minipost.chat import generation_prompt
from minipost.evaluate import prompt_of
from minipost.generate import sample_next
from minipost.model import KVCache
from minipost.stages import common

HELD_OUT = "sft_test"  # the built-in split --held-out draws its questions from (no setting saw it)


def add_args(p, stage):
    g = p.add_argument_group("chat")
    g.add_argument("--prompt", default=None,
                   help="answer this one message and exit (no interactive session)")
    g.add_argument("--system", default=None, help="system message that opens the conversation")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 is greedy decoding, as the evaluation uses")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the most likely tokens up to this probability (1: all)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="longest reply, in tokens")
    g.add_argument("--compare", type=Path, nargs="+", default=None,
                   help="more runs that answer every message too, after the first (e.g. before/after DPO)")
    g.add_argument("--held-out", type=int, default=0,
                   help="answer the first N held-out questions of the built-in SFT data (each a fresh "
                        "conversation with its own system message and order record) and exit (0: none)")


def load_chat_model(run, device="cpu"):
    """A run directory -> (model in eval mode, tokenizer): a full model as saved, an adapter run
    as its base with the adapter applied (not merged, so every PEFT method works)."""
    ckpt = None if pretrained.is_pretrained_source(run) else checkpoint.checkpoint_dir(run)  # the current unit
    if ckpt is not None and (ckpt / "adapter.safetensors").is_file():
        from minipost import peft

        info = checkpoint.read_json(ckpt / "config.json")
        if checkpoint.read_json(ckpt / "adapter.json").get("method") == "probe":
            raise SystemExit(f"train.py: error: {run} is a linear probe (a classifier); it does not generate text")
        model, _, _ = common.load_stage_model(info["base"], device)
        model = peft.load_adapter(model, ckpt)
        tok = common.load_tokenizer(ckpt)
    else:
        model, tok, _ = common.load_stage_model(run, device)
    model.eval().requires_grad_(False)
    return model.to(device), tok


@torch.no_grad()
def stream_reply(model, tok, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float | None = None, generator: torch.Generator | None = None, on_text=None) -> str:
    """Sample a reply to `prompt` (token ids, a generation prompt) -> its text; on_text(piece)
    is called with each new piece of text as soon as it is whole."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    positions = torch.arange(len(prompt), device=device)[None]
    cache = KVCache(len(model.layers))
    logits = model(ids, doc_ids=torch.ones_like(ids), position_ids=positions, kv_cache=cache)[:, -1]
    reply, shown = [], ""
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, None, top_p, generator)
        if int(nxt) in tok.control_ids:
            break
        reply.append(int(nxt))
        text = tok.decode(reply)
        if on_text is not None and text.startswith(shown) and not text.endswith("\ufffd"):
            on_text(text[len(shown):])
            shown = text
        position = torch.full((1, 1), len(prompt) + step, dtype=torch.long, device=device)
        logits = model(nxt[:, None], doc_ids=torch.ones_like(position), position_ids=position, kv_cache=cache)[:, -1]
    text = tok.decode(reply)
    if on_text is not None and text.startswith(shown) and text != shown:
        on_text(text[len(shown):])
    return text


class Conversation:
    """One model's side of a chat: its messages (with its own replies) and how it samples."""

    def __init__(self, name: str, model, tok, args, generator: torch.Generator):
        self.name, self.model, self.tok, self.args, self.generator = name, model, tok, args, generator
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.args.system}] if self.args.system else []

    def _fitted_prompt(self) -> list[int] | None:
        """The generation prompt, dropping the oldest exchanges until it fits the context."""
        budget = self.model.cfg.max_seq_len - self.args.max_new_tokens
        while True:
            prompt = generation_prompt(self.messages, self.tok)
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(prompt) <= budget or len(self.messages) - first <= 1:
                return prompt if len(prompt) <= budget else None
            del self.messages[first: first + 2]  # the oldest user message and the reply to it
            print(f"[chat] {self.name}: the conversation outgrew the context; dropped the oldest exchange",
                  file=sys.stderr)

    def answer(self, text: str, out) -> str | None:
        """Add the user's text, stream the reply to `out`, keep it in the conversation."""
        self.messages.append({"role": "user", "content": text})
        prompt = self._fitted_prompt()
        if prompt is None:
            self.messages.pop()
            print(f"[chat] {self.name}: that message does not fit the model's context of "
                  f"{self.model.cfg.max_seq_len} tokens with --max-new-tokens {self.args.max_new_tokens}",
                  file=sys.stderr)
            return None

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        top_p = self.args.top_p if self.args.top_p < 1.0 else None
        reply = stream_reply(self.model, self.tok, prompt, self.args.max_new_tokens, self.args.temperature,
                             top_p, self.generator, on_text=show)
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def held_out_questions(n: int) -> list[dict]:
    """The first n held-out SFT records that ask about a fact of their order."""
    from minipost import data as datasets

    records = [r for r in datasets.read_sft(datasets.builtin(HELD_OUT)) if "fact" in r.get("meta", {})]
    return records[:n]


def _names(runs: list[Path]) -> list[str]:
    names = [r.name or str(r) for r in runs]
    return [str(r) for r in runs] if len(set(names)) < len(names) else names


def run(args):
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        raise SystemExit("train.py: error: need --temperature >= 0, 0 < --top-p <= 1 and --max-new-tokens >= 1")
    common.seed_everything(args.seed)
    runs = [Path(args.init)] + [Path(r) for r in args.compare or []]
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    sides = [Conversation(name, *load_chat_model(r, args.device), args, generator)
             for name, r in zip(_names(runs), runs)]
    replies = {c.name: [] for c in sides}
    out = sys.stdout

    def turn(text: str) -> None:
        for c in sides:
            if len(sides) > 1:
                out.write(f"[{c.name}] ")
            replies[c.name].append(c.answer(text, out))

    if args.prompt is not None:
        turn(args.prompt)
        return {"replies": replies}
    if args.held_out:
        for i, record in enumerate(held_out_questions(args.held_out), 1):
            *context, question = prompt_of(record)
            out.write(f"--- held-out question {i} ({record['meta']['intent']}; the record says "
                      f"{record['meta']['fact']!r}) ---\n{question['content']}\n")
            for c in sides:
                c.messages = list(context)  # a fresh conversation: the record's system message, if any
            turn(question["content"])
        return {"replies": replies}
    print(f"[chat] talking to {' and '.join(str(r) for r in runs)}; /reset forgets the conversation, "
          "/exit ends", file=sys.stderr)
    while True:
        print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            for c in sides:
                c.reset()
            print("[chat] conversation reset", file=sys.stderr)
        elif text.strip():
            turn(text)
    return {"replies": replies}
