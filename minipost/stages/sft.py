"""Supervised fine-tuning on chat data (`--stage sft`), from out/pretrain by default.

loss = sum over trained tokens of -log p(target) / number of trained tokens in the batch

Which tokens are trained is the label mask (`--mask`, see chat.py): "prompt" trains the
assistant's replies only (Ouyang et al., 2022), "template" also the user and system text
(Shi et al., 2024), "none" everything. The mean is over the trained tokens of the whole
accumulated batch (training.py explains why that keeps token weighting right).

`--packing on` (default) fits several conversations into each row with document masks and
restarted positions, so no compute goes to padding and no conversation sees another;
`--packing off` pads each conversation to the longest in its batch (bench/packing.py
compares the two).

Records: {"messages"}, {"prompt", "completion"} (strings or messages) or {"text"}
(data.read_sft, tokenized by formats.sft_tokens). `--cpt-mix F` mixes plain text (--cpt-file,
default the built-in CPT corpus) in at F of the trained tokens (mixture.joint_cpt_sft), so the
new domain is learned in the same run without forgetting it again. `--self-replay F` mixes in
the starting model's own replies to general prompts (replay.py), against forgetting what the
model could do before.

eval.json: val_loss (reply tokens of held-out conversations), with the starting model's
numbers as *_before; on the built-in data also format_rate, fact_accuracy and voice_rate of
greedy replies (evaluate.py), which are Minimart judges and mean nothing on a user's own data.
The same on the test split (sft_test, or --test-file) as test_loss, test_fact_accuracy, ...,
and general_accuracy on a real model (common.held_out).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from minipost import data as datasets
from minipost import distributed, replay
from minipost import evaluate as ev
from minipost.chat import MASK_MODES
from minipost.formats import sft_tokens
from minipost.mixture import joint_cpt_sft, mix_documents
from minipost.logprobs import scored_nll_sum
from minipost.losses import IGNORE_INDEX
from minipost.packing import batches, fit_sft, pack, pad_batch
from minipost.stages import common
from minipost.training import SCHEDULES, ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr


def add_args(p, stage):
    p.set_defaults(steps=900, batch_size=16, lr=2e-3, warmup=20)
    p.add_argument("--mask", default="prompt", choices=MASK_MODES, help="which tokens carry the loss")
    p.add_argument("--packing", default="on", choices=("on", "off"),
                   help="on: several conversations per row (document masks); off: one, padded")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per row (longer conversations are cut)")
    p.add_argument("--train-file", default=None, help="SFT JSONL file (default: the built-in sft_train)")
    p.add_argument("--val-file", default=None, help="held-out SFT JSONL file (default: the built-in sft_val)")
    common.add_test_arg(p, "sft_test")
    p.add_argument("--schedule", default="rewarm", choices=SCHEDULES, help="learning-rate schedule (training.lr_at)")
    p.add_argument("--cpt-mix", type=float, default=0.0,
                   help="share of the trained tokens that is plain text from --cpt-file (0: none)")
    p.add_argument("--cpt-file", default=None, help="plain-text JSONL mixed in (default: the built-in cpt_train)")
    p.add_argument("--self-replay", type=float, default=0.0,
                   help="share of the trained tokens that is the starting model's own replies to general "
                        "prompts (replay.py; 0: none)")
    p.add_argument("--replay-file", default=None,
                   help="prompts JSONL for --self-replay, {\"prompt\"} per line (default: the built-in general_replay)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length for the reply metrics")


def tokenize(records, tok, mask: str, seq_len: int, what: str):
    docs = [sft_tokens(r, tok, mask) for r in records]
    docs, counts = fit_sft(docs, seq_len)
    if counts["truncated"] or counts["dropped"]:
        print(f"[sft] {what}: {counts['truncated']} conversations truncated to {seq_len} tokens, "
              f"{counts['dropped']} dropped (nothing left to train)", file=sys.stderr)
    return docs


def make_rows(docs, tok, seq_len: int, packing: str) -> dict[str, torch.Tensor]:
    if packing == "on":
        return pack(docs, seq_len, tok.pad_id)
    return pad_batch(docs, tok.pad_id, seq_len)


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop columns that are padding in every row (padded batches: pad to the longest)."""
    width = int((batch["targets"] != IGNORE_INDEX).any(0).nonzero().max()) + 1
    return {k: v[:, :width] for k, v in batch.items()}


def trained_nll_sum(model, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed or padded batch -> (summed NLL of its trained tokens, how many). lm_head runs
    on those tokens only, a vocabulary block at a time (logprobs.scored_nll_sum)."""
    return scored_nll_sum(model, b["input_ids"], b["targets"], doc_ids=b["doc_ids"], position_ids=b["position_ids"])


@torch.no_grad()
def val_loss(model, rows: dict[str, torch.Tensor], batch_size: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, rows["input_ids"].shape[0], batch_size):
        b = {k: v[i: i + batch_size] for k, v in rows.items()}
        loss_sum, n = trained_nll_sum(model, b)
        total, count = total + loss_sum.item(), count + int(n)
    model.train()
    return total / max(count, 1)


def run(args):
    started = time.time()
    common.seed_everything(args.seed)
    model, tok = common.prepare_model(args)

    train_records = datasets.read_sft(args.train_file or datasets.builtin("sft_train"))
    val_records = datasets.read_sft(args.val_file or datasets.builtin("sft_val"))
    test_file = common.test_path(args.test_file, args.val_file, "sft_test")
    train_docs = tokenize(train_records, tok, args.mask, args.seq_len, "train")
    if args.cpt_mix > 0:
        texts = datasets.read_texts(args.cpt_file or datasets.builtin("cpt_train"))
        train_docs, stats = joint_cpt_sft(train_docs, texts, tok, args.cpt_mix, args.seq_len, args.seed)
        print(f"[sft] --cpt-mix {args.cpt_mix}: {stats}", file=sys.stderr)
    if args.self_replay > 0:
        prompts = [r["prompt"] for r in datasets.read_rl(args.replay_file or datasets.builtin("general_replay"))]
        records = replay.load_or_make(Path(args.out) / "self_replay.jsonl", args.resume,
                                      lambda: replay.replay_conversations(model, tok, prompts))
        if not records:
            raise SystemExit(f"train.py: error: --self-replay: none of the starting model's {len(prompts)} replies "
                             f"ended within {replay.REPLY_TOKENS} tokens, so there is nothing to rehearse (try shorter prompts)")
        replay_docs = tokenize(records, tok, args.mask, args.seq_len, "self-replay")
        train_docs, stats = mix_documents(train_docs, replay_docs, args.self_replay, args.seed)
        print(f"[sft] --self-replay {args.self_replay}: {len(records)} of {len(prompts)} replies kept; "
              f"{stats}", file=sys.stderr)
    train_rows = make_rows(train_docs, tok, args.seq_len, args.packing)
    own_data = args.train_file is not None or args.val_file is not None

    def held_out_split(records, what):  # -> (rows for the loss, records for the reply metrics)
        # The held-out loss is always on the replies ("prompt" mask), so runs with different
        # --mask settings are compared on the same tokens. At most --max-eval conversations (all
        # 200 of the built-in split at the default): on a real model each costs a forward pass.
        records = records[: args.max_eval]
        rows = pack(tokenize(records, tok, "prompt", args.seq_len, what), args.seq_len, tok.pad_id)
        # The Minimart judges (format, facts, voice) only mean something on the built-in data.
        return rows, [] if own_data else [r for r in records if "fact" in r.get("meta", {})][: args.max_eval]

    val = held_out_split(val_records, "val")
    val_rows = val[0]  # the loss that --eval-every logs during training
    test = held_out_split(datasets.read_sft(test_file), "test") if test_file else None
    n_rows = train_rows["input_ids"].shape[0]
    per_epoch = -(-n_rows // args.batch_size)
    print(f"[sft] {len(train_records)} conversations -> {n_rows} rows of {args.seq_len} "
          f"(packing {args.packing}); {per_epoch} batches per epoch", file=sys.stderr)

    def evaluate(rows, eval_records) -> dict:
        replies = ev.reply_metrics(model, tok, eval_records, args.max_new_tokens) if eval_records else {}
        return {"val_loss": val_loss(model, rows), **replies}

    held_out = lambda: common.held_out(args, model, tok, lambda split: evaluate(*split), val, test)  # noqa: E731
    before = {} if args.resume else common.as_before(held_out())
    if before:
        print(f"[sft] before: {before}", file=sys.stderr)

    def micro_batch(step: int, i: int):
        k = distributed.shard_index(step * args.grad_accum + i)  # torchrun: rank r of W takes every W-th batch
        batch = next(batches(train_rows, args.batch_size, args.seed, epoch=k // per_epoch, start=k % per_epoch))
        return trim(batch) if args.packing == "off" else batch

    def loss_fn(b):  # -> (loss summed over the batch's trained tokens, no stats)
        b = {k: v.to(args.device) for k, v in b.items()}
        loss_sum, _ = trained_nll_sum(model, b)
        return loss_sum, {}

    optimizer = make_optimizer(model, args.lr)
    start = common.resume_step(args, optimizer)
    save = lambda step: common.save_stage(model, tok, args, optimizer, step, mask=args.mask)  # noqa: E731
    net = distributed.wrap(model)  # DDP under torchrun: loss_fn runs inside its forward
    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            model.train()
            lr = set_lr(optimizer, step, args)
            micro = [micro_batch(step, i) for i in range(args.grad_accum)]
            acc = ItemWeighted([(b["targets"] != IGNORE_INDEX).sum().item() for b in micro])
            for j, b in enumerate(micro):  # gradients are synced over the ranks on the last one only
                acc.backward(*net(loss_fn, b, sync=j == len(micro) - 1))
            record = acc.result()
            record.update(lr=lr, grad_norm=clip_and_step(optimizer, record["loss"], step))
            progress.log(step, record, items=acc.total, evaluate=lambda: {"val_loss": val_loss(model, val_rows)})
    save(args.steps)
    return common.finish(args, {**held_out(), **before}, started)
