"""Self-replay against forgetting: rehearse the starting model's own replies to general prompts.

Fine-tuning a chat model on one narrow task (here: read an order record, copy a fact out of
it) can overwrite what it did before. Measured on SmolLM2-135M-Instruct (docs/smollm2.md):
30 LoRA steps on the Minimart tickets took general_accuracy from 0.80 to 0.25, the model now
answering "What is the capital of Spain?" with "heya, it's capital of Spain": it copies
words out of the question as it learned to copy them out of the record.

Pseudo-rehearsal (Robins, 1995, "Catastrophic forgetting, rehearsal and pseudorehearsal")
keeps old behaviour without the old training data: let the model itself produce inputs and
outputs of its old behaviour and train on them beside the new task. Self-distillation
fine-tuning (Yang et al., 2024, "Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning") does the same for chat models. Here:

    replay conversation = [user: p, assistant: greedy reply of the STARTING model to p]

for every prompt p of a fixed pool (data/minimart/general_replay.jsonl, written by
data/general.py). The pool holds other kinds of requests than the general_accuracy questions
(no capitals, sums, opposites or plurals), so rehearsing it cannot teach the held-out answers;
it only keeps the model answering a general question from what it knows. Replies that do not
end within max_new_tokens are left out (training on them would teach not to stop).

The conversations go into SFT like any other (`--self-replay F`: F of the trained tokens, by
mixture.mix_documents' rule), with the template's default system message, so the model sees
them as it sees a user's general question at evaluation. They are written to the run
directory (self_replay.jsonl) on the first run and read back on --resume: a resumed run's
model has already changed, and its replies would not be the starting model's.
"""
from __future__ import annotations

import json
from pathlib import Path

from minipost.checkpoint import atomic_write
from minipost.data import read_sft
from minipost.evaluate import greedy_replies


REPLY_TOKENS = 64  # a reply that has not ended by then is left out


def replay_conversations(model, tok, prompts: list[list[dict]], max_new_tokens: int = REPLY_TOKENS) -> list[dict]:
    """The model's own greedy replies to `prompts` (each a list of messages, as data.read_rl
    gives them) -> SFT records {"messages"}, only the replies that ended by themselves."""
    replies = greedy_replies(model, tok, prompts, max_new_tokens)
    return [{"messages": [*msgs, {"role": "assistant", "content": text}]}
            for msgs, (text, ended) in zip(prompts, replies) if ended and text.strip()]


def load_or_make(path: Path, resume: bool, make) -> list[dict]:
    """The replay records of a run: read from `path` when resuming, else make() and write them
    there atomically."""
    path = Path(path)
    if resume and path.is_file():
        return read_sft(path)
    records = make()

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    atomic_write(path, write)
    return records
