"""Pretraining (`--stage pretrain`) and continual pretraining (`--stage cpt`).

Next-token prediction: loss = mean over tokens of -log p(x_t | x_<t).

pretrain: trains the tokenizer if there is none, then a model from scratch on the general
Minimart corpus. As in GPT-2 and nanoGPT the documents are joined into one token stream
(bos ... eos between them) and cut into rows of seq_len; attention is plainly causal
across the joins, the cheapest layout and the usual one for pretraining.

cpt: continues a base model on the new-domain corpus. `--replay F` mixes a fraction F of
general rows into every batch, the simple remedy for forgetting in continual learning
(Scialom et al., 2022; Ibrahim et al., 2024 "Simple and scalable strategies to
continually pre-train LLMs": a few percent of replay plus LR re-warming and re-decaying).
`--schedule rewarm|cosine|constant` picks the learning-rate schedule.
eval.json: pretrain -> val_loss; cpt -> domain_val_loss, general_val_loss (and the
base model's numbers before training, *_before); on a real model also general_accuracy
(the general questions of data/general.py, heldout.general_numbers), before and after.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minipost import data as datasets
from minipost import distributed
from minipost.config import preset
from minipost.model import GPT
from minipost.seeding import rng
from minipost.stages import common
from minipost.tokenizer import Tokenizer
from minipost.training import SCHEDULES, ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr

TOKENIZER_DIR = Path("out/tokenizer")


def add_args(p, stage):
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training row")
    p.add_argument("--vocab-size", type=int, default=3072, help="tokenizer vocabulary (trained when missing)")
    p.add_argument("--eval-rows", type=int, default=64, help="held-out rows for the loss")
    p.add_argument("--split-digits", default="on", choices=("on", "off"),
                   help="tokenizer: one token per digit (on) or BPE merges of digit runs (off)")
    p.add_argument("--schedule", default="rewarm", choices=SCHEDULES, help="learning-rate schedule (training.lr_at)")
    p.add_argument("--train-file", default=None, help="plain-text JSONL {\"text\"} (default: the built-in corpus)")
    p.add_argument("--val-file", default=None, help="held-out plain-text JSONL (default: the built-in one)")
    if stage == "pretrain":
        p.set_defaults(steps=900, batch_size=16, lr=3e-3, warmup=50)
    else:
        p.set_defaults(steps=300, batch_size=16, lr=1e-3, warmup=30)
        p.add_argument("--replay", type=float, default=0.05, help="fraction of general text in each batch")


def token_rows(texts: list[str], tok: Tokenizer, seq_len: int) -> torch.Tensor:
    """Join documents as bos text eos ..., cut into rows [N, seq_len + 1] (inputs and shifted targets)."""
    stream = []
    for t in texts:
        stream += [tok.bos_id, *tok.encode(t), tok.eos_id]
    from minipost.validate import check_corpus_size

    check_corpus_size(len(stream) - 1, seq_len, "the pretraining corpus")  # one line, not a ValueError
    n = (len(stream) - 1) // seq_len
    stream = torch.tensor(stream[: n * seq_len + 1])
    return torch.stack([stream[i * seq_len: (i + 1) * seq_len + 1] for i in range(n)])


def get_tokenizer(args) -> Tokenizer:
    path = TOKENIZER_DIR / "tokenizer.model"
    if not path.is_file() and distributed.is_main():  # under torchrun one rank trains it, the others wait
        print(f"[{args.stage}] training the tokenizer (vocab {args.vocab_size}) -> {path}", file=sys.stderr)
        Tokenizer.train(datasets.read_texts(datasets.builtin("pretrain_train")), path, args.vocab_size,
                        split_digits=getattr(args, "split_digits", "on") == "on")
    distributed.barrier()
    return Tokenizer(path)


@torch.no_grad()
def rows_loss(model, rows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss over rows [N, L+1]."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        r = rows[i: i + batch_size]
        logits = model(r[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), r[:, 1:].flatten(), reduction="sum").item()
        count += r[:, 1:].numel()
    return total / count


def sample_rows(rows_by_source: list[tuple[torch.Tensor, float]], n: int, seed: int, step: int, micro: int):
    """n rows drawn at random, each from a source chosen with the given probabilities.

    A function of (seed, step, micro) only, so a resumed run draws the same batches.
    """
    g = rng(seed, "rows", step, micro)
    probs = torch.tensor([w for _, w in rows_by_source])
    which = torch.multinomial(probs, n, replacement=True, generator=g)
    out = []
    for k in which.tolist():
        rows = rows_by_source[k][0]
        out.append(rows[torch.randint(len(rows), (1,), generator=g).item()])
    return torch.stack(out)


def run(args):
    started = time.time()
    common.seed_everything(args.seed)
    def fresh():
        tok = get_tokenizer(args)
        return GPT(preset(args.preset, tok.vocab_size, max_seq_len=max(args.seq_len, 256))), tok

    model, tok = common.prepare_model(args, fresh)
    # --train-file/--val-file stand in for the stage's own corpus (general text for pretrain,
    # the new domain for cpt; the replayed general text stays the built-in one).
    own = {"pretrain": ("pretrain_train", "pretrain_val"), "cpt": ("cpt_train", "cpt_val")}[args.stage]
    train_file = args.train_file or datasets.builtin(own[0])
    val_file = args.val_file or datasets.builtin(own[1])
    general_file = train_file if args.stage == "pretrain" else datasets.builtin("pretrain_train")
    general = token_rows(datasets.read_texts(general_file), tok, args.seq_len)
    if args.stage == "pretrain":
        sources = [(general, 1.0)]
    else:
        if not 0.0 <= args.replay < 1.0:
            raise SystemExit(f"train.py: error: --replay must be in [0, 1), got {args.replay}")
        domain = token_rows(datasets.read_texts(train_file), tok, args.seq_len)
        sources = [(domain, 1.0 - args.replay), (general, args.replay)]

    general_val_file = val_file if args.stage == "pretrain" else datasets.builtin("pretrain_val")
    general_val = token_rows(datasets.read_texts(general_val_file), tok, args.seq_len)[: args.eval_rows]
    domain_val = None
    before = {}
    if args.stage == "cpt":
        domain_val = token_rows(datasets.read_texts(val_file), tok, args.seq_len)[: args.eval_rows]
        if not args.resume:
            before = {"domain_val_loss_before": rows_loss(model, domain_val),
                      "general_val_loss_before": rows_loss(model, general_val),
                      **common.as_before(common.general_numbers(args, model, tok))}
            print(f"[cpt] before: {before}", file=sys.stderr)

    def evaluate() -> dict:
        if domain_val is None:
            return {"val_loss": rows_loss(model, general_val)}
        return {"domain_val_loss": rows_loss(model, domain_val), "general_val_loss": rows_loss(model, general_val)}

    def loss_fn(rows):  # -> (next-token loss summed over the rows' tokens, no stats)
        rows = rows.to(args.device)
        logits = model(rows[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"), {}

    optimizer = make_optimizer(model, args.lr)
    start = common.resume_step(args, optimizer)
    save = lambda step: common.save_stage(model, tok, args, optimizer, step, seq_len=args.seq_len)  # noqa: E731
    net = distributed.wrap(model)  # DDP under torchrun: loss_fn runs inside its forward
    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            model.train()
            lr = set_lr(optimizer, step, args)
            # torchrun: each rank draws its own rows
            micro = [sample_rows(sources, args.batch_size, args.seed, step, distributed.shard_index(i))
                     for i in range(args.grad_accum)]
            acc = ItemWeighted([rows[:, 1:].numel() for rows in micro])
            for j, rows in enumerate(micro):  # gradients are synced over the ranks on the last one only
                acc.backward(*net(loss_fn, rows, sync=j == len(micro) - 1))
            record = acc.result()
            record.update(lr=lr, grad_norm=clip_and_step(optimizer, record["loss"], step))
            progress.log(step, record, items=acc.total, evaluate=evaluate)
    save(args.steps)
    metrics = evaluate()
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SystemExit(f"[{args.stage}] held-out loss is not finite: {metrics}")
    if args.stage == "pretrain":
        print_samples(model, tok)
    else:  # on a real model, does new-domain text cost it its general answers?
        metrics.update(common.general_numbers(args, model, tok))
    return common.finish(args, {**metrics, **before}, started)


def print_samples(model, tok: Tokenizer, n: int = 3, max_new_tokens: int = 48) -> None:
    """Greedy continuations of a few openings, to see what the model writes."""
    from minipost.generate import generate

    openings = ["Minimart", "Our new", "Order #"][:n]
    out = generate(model, [[tok.bos_id, *tok.encode(o)] for o in openings], max_new_tokens,
                   stop_ids=[tok.eos_id], pad_id=tok.pad_id)
    for o, ids in zip(openings, out.tokens.tolist()):
        print(f"  sample: {o}{tok.decode(ids)!r}", file=sys.stderr)
