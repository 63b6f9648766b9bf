"""Linear probing (`--stage probe`): what does the frozen model already know?

    p(y | x) = softmax(W phi(x) + b),   phi(x) = pooled final hidden states of the frozen GPT

Only W and b are trained (cross-entropy), so held-out accuracy measures how linearly the
base model's features separate the classes (Alain & Bengio, 2016; the probing setup of
the CS324 adaptation lecture). The built-in task: the intent of a short support message
(where is my order, return/refund, cancel, product question, complaint).

eval.json: probe_accuracy (held-out), majority_baseline (the most frequent class's share),
and the same on the test split (intent_test or --test-file) as test_probe_accuracy, ...
"""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from minipost import data as datasets
from minipost import distributed
from minipost import peft
from minipost.seeding import rng
from minipost.stages import common
from minipost.training import ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr


def add_args(p, stage):
    p.set_defaults(steps=150, batch_size=32, lr=3e-3, warmup=10)
    p.add_argument("--pooling", default="mean", choices=("mean", "last"), help="how hidden states become features")
    p.add_argument("--max-len", type=int, default=64, help="tokens per message (longer ones are cut)")
    p.add_argument("--train-file", default=None, help="labeled JSONL {\"text\", \"label\"} (default: built-in intents)")
    p.add_argument("--val-file", default=None, help="held-out labeled JSONL (default: built-in intents)")
    common.add_test_arg(p, "intent_test")


def encode(records, tok, max_len: int):
    """-> input_ids [N, L] (right padded), attention_mask [N, L], labels [N]."""
    ids = [[tok.bos_id, *tok.encode(r["text"])][:max_len] for r in records]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_id)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    return input_ids, mask, torch.tensor([r["label"] for r in records])


@torch.no_grad()
def accuracy(probe, input_ids, mask, labels, batch_size: int = 64, device="cpu") -> float:
    """Held-out accuracy of the probe; input_ids, mask [N, L], labels [N] (moved to device)."""
    probe.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = probe(input_ids[i:i + batch_size].to(device), mask[i:i + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum().item()
    probe.train()
    return correct / len(labels)


def run(args):
    started = time.time()
    common.seed_everything(args.seed)
    model, tok, _ = common.load_stage_model(args.init, args.device)
    n_classes = len(json.loads(datasets.builtin("intent_train").with_name("intent_labels.json").read_text()))
    probe = peft.apply_peft(model, "probe", n_classes=n_classes, pooling=args.pooling)
    args.peft = "probe"
    n_train, n_total = peft.trainable_parameters(probe)
    args.trainable_params, args.total_params = n_train, n_total

    train = encode(datasets.read_labeled(args.train_file or datasets.builtin("intent_train")), tok, args.max_len)
    val = encode(datasets.read_labeled(args.val_file or datasets.builtin("intent_val")), tok, args.max_len)
    test_file = common.test_path(args.test_file, args.val_file, "intent_test")
    test = encode(datasets.read_labeled(test_file), tok, args.max_len) if test_file else None
    if max(int(split[2].max()) for split in (train, val, test) if split is not None) >= n_classes:
        raise SystemExit(f"train.py: error: a label is >= the number of classes ({n_classes})")

    def micro_batch(step, i):
        g = rng(args.seed, "probe", step, distributed.shard_index(i))  # torchrun: own draws per rank
        idx = torch.randint(len(train[2]), (args.batch_size,), generator=g)
        return tuple(t[idx] for t in train)

    def loss_fn(batch):  # -> (cross-entropy summed over the batch's messages, no stats)
        input_ids, mask, labels = (t.to(args.device) for t in batch)
        return F.cross_entropy(probe(input_ids, mask), labels, reduction="sum"), {}

    optimizer = make_optimizer(probe, args.lr, weight_decay=0.0)
    start = common.resume_step(args, optimizer)

    def save(step):  # one checkpoint unit: the probe's head (its adapter), config, tokenizer, state
        common.save_stage(probe, tok, args, optimizer, step)

    if args.resume:
        peft.load_adapter(probe, common.checkpoint.checkpoint_dir(args.out))
    net = distributed.wrap(probe)  # DDP under torchrun: loss_fn runs inside its forward
    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            probe.train()
            lr = set_lr(optimizer, step, args)
            micro = [micro_batch(step, i) for i in range(args.grad_accum)]
            acc = ItemWeighted([len(labels) for _, _, labels in micro])
            for j, b in enumerate(micro):  # gradients are synced over the ranks on the last one only
                acc.backward(*net(loss_fn, b, sync=j == len(micro) - 1))
            record = acc.result()
            record.update(lr=lr, grad_norm=clip_and_step(optimizer, record["loss"], step))
            progress.log(step, record, items=acc.total,
                         evaluate=lambda: {"probe_accuracy": accuracy(probe, *val, device=args.device)})
    save(args.steps)

    def evaluate(input_ids, mask, labels):
        majority = torch.bincount(labels, minlength=n_classes).max().item() / len(labels)
        return {"probe_accuracy": accuracy(probe, input_ids, mask, labels, device=args.device),
                "majority_baseline": majority}

    return common.finish(args, common.held_out(args, model, tok, lambda split: evaluate(*split), val, test,
                                               general=False), started)
