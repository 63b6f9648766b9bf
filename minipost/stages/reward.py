"""Reward model (`--stage rm`), starting from the SFT model (out/sft).

Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", section 3.5: the SFT model with its unembedding replaced by a scalar head
(value_head.py) scores prompt + reply, r(x, y) = w . h_last(x, y) + b, and is trained on
preference pairs with the Bradley & Terry 1952 likelihood P(y_c beats y_r) =
sigmoid(r(x, y_c) - r(x, y_r)), i.e. the loss of losses/reward.py:

    loss = mean_pairs [ -log sigmoid(r_c - r_r - margin) ] + center_coef * mean_pairs [ (r_c + r_r)^2 ]

--margin m asks the gap to exceed m (Llama 2's margin; a record's own "margin" key wins);
--center-coef keeps the rewards centred on 0 (Eisenstein et al. 2023), which makes them
usable as PPO rewards without further normalisation.

As in DPO (stages/dpo.py), the chosen and the rejected sequences of a batch go through the
model in one right-padded batch [2B, W]. The reward is read at the sequence's last token,
the <|end|> that closes the reply.

Outputs in --out: the model (or adapter) as every stage, plus the head as
value_head.safetensors in the same checkpoint unit (load both with load_reward_model). eval.json: pair_accuracy, the
fraction of held-out pref_val pairs with r_c > r_r (ties count as wrong), per pair kind
where the data says (pair_accuracy_voice, ...), and the held-out rewards' mean and std;
the same on the test split (pref_test, or --test-file) as test_pair_accuracy, ...
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from minipost import data as datasets
from minipost import checkpoint, distributed, validate
from minipost.losses import reward_loss
from minipost.data import tokenize_pairs
from minipost.packing import pad_batch, pair_indices
from minipost.stages import common
from minipost.training import ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr
from minipost.value_head import RewardModel, ValueHead

HEAD_FILE = "value_head.safetensors"


def add_args(p, stage):
    p.set_defaults(steps=150, batch_size=8, lr=1e-4, warmup=10)
    p.add_argument("--margin", type=float, default=0.0,
                   help="required reward gap (a record's own 'margin' key takes precedence)")
    p.add_argument("--center-coef", type=float, default=0.01, help="weight of the reward-centering term")
    p.add_argument("--max-len", type=int, default=None,
                   help="drop pairs longer than this (default: the model's context)")
    p.add_argument("--train-file", type=Path, default=None, help="preference JSONL (default: built-in pref_train)")
    p.add_argument("--val-file", type=Path, default=None, help="held-out preference JSONL (default: pref_val)")
    common.add_test_arg(p, "pref_test")
    p.add_argument("--max-pairs", type=int, default=None,
                   help="train on the first N preference pairs only (None: all), e.g. to compare reward models "
                        "of different quality")


def full_sequence(doc) -> list[int]:
    """The whole token list of a rendered completion (prompt + reply + <|end|>) from its
    (input_ids, targets): the inputs plus the last target."""
    ids, targets = doc
    return [*ids, targets[-1]]


def reward_batch(pairs: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs of full sequences -> input_ids [2B, W] (chosen rows, then rejected rows, right
    padded) and lengths [2B] (real tokens per row)."""
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    batch = pad_batch([(s, s) for s in seqs], pad_id)
    return {"input_ids": batch["input_ids"], "lengths": torch.tensor([len(s) for s in seqs])}


def score_batch(rm: RewardModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (chosen rewards [B], rejected rewards [B]); a pair's prompt runs once (RewardModel pairs)."""
    rewards = rm(batch["input_ids"], batch["lengths"], pairs=True)
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


@torch.no_grad()
def score_pairs(rm: RewardModel, pairs: list[tuple], pad_id: int, batch_size: int = 16, device="cpu") -> torch.Tensor:
    """[N, 2] rewards of (chosen, rejected) for every pair, in eval mode."""
    was_training = rm.training
    rm.eval()
    rows = []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in reward_batch(pairs[i: i + batch_size], pad_id).items()}
        rows.append(torch.stack(score_batch(rm, batch), 1).cpu())
    rm.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, 2)


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs with chosen > rejected (a tie is wrong). chosen, rejected: [N]."""
    return int((chosen > rejected).sum()) / len(chosen) if len(chosen) else 0.0


def rm_objective(chosen, rejected, margin, center_coef):
    """chosen, rejected, margin [B] -> (loss summed over the pairs, stats summed over the
    pairs), as ItemWeighted.backward expects. reward_loss is a mean over the batch, hence the * B."""
    n = chosen.shape[0]
    loss = reward_loss(chosen, rejected, margin=margin, center_coef=center_coef) * n
    stats = {"rewards/chosen": chosen.detach().sum(), "rewards/rejected": rejected.detach().sum(),
             "rewards/accuracies": (chosen > rejected).float().sum(),
             "rewards/margins": (chosen - rejected).detach().sum()}
    return loss, stats


def load_reward_model(ckpt_dir: str | Path, device="cpu") -> tuple[RewardModel, object]:
    """A trained reward model (the stage's checkpoint plus value_head.safetensors) -> (rm, tokenizer)."""
    model, tok, _ = common.load_stage_model(ckpt_dir, device)
    rm = RewardModel(model, ValueHead.load(checkpoint.checkpoint_dir(ckpt_dir) / HEAD_FILE)).to(device)
    return rm, tok


def run(args):
    started = time.time()
    common.seed_everything(args.seed)
    model, tok = common.prepare_model(args)
    rm = RewardModel(model)
    if args.resume:
        rm.head = ValueHead.load(checkpoint.checkpoint_dir(args.out) / HEAD_FILE).to(args.device)
    max_len = args.max_len or model.cfg.max_seq_len

    # Data: full sequences of prompt + reply + <|end|>; a margin per pair.
    train_records = datasets.read_preferences(args.train_file or datasets.builtin("pref_train"))[: args.max_pairs]
    # At most --max-eval held-out pairs (all 200 of the built-in pref_val at the default).
    val_records = datasets.read_preferences(args.val_file or datasets.builtin("pref_val"))[: args.max_eval]
    validate.check_pairs_differ(train_records, args.train_file or "the built-in pref_train")  # zero-gradient pairs
    train_pairs, kept = tokenize_pairs(train_records, tok, max_len)
    val_pairs, val_kept = tokenize_pairs(val_records, tok, max_len)
    if not train_pairs or not val_pairs:
        raise SystemExit(f"[rm] no preference pair fits in --max-len {max_len}")
    train_pairs = [(full_sequence(c), full_sequence(r)) for c, r in train_pairs]
    val_pairs = [(full_sequence(c), full_sequence(r)) for c, r in val_pairs]
    val = (val_pairs, [val_records[i].get("meta", {}).get("kind") for i in val_kept])
    test_file = common.test_path(args.test_file, args.val_file, "pref_test")
    test = None
    if test_file:
        test_records = datasets.read_preferences(test_file)[: args.max_eval]
        test_pairs, test_kept = tokenize_pairs(test_records, tok, max_len)
        if not test_pairs:
            raise SystemExit(f"[rm] no test pair fits in --max-len {max_len}")
        test = ([(full_sequence(c), full_sequence(r)) for c, r in test_pairs],
                [test_records[i].get("meta", {}).get("kind") for i in test_kept])
    margins = torch.tensor([float(train_records[i].get("margin", args.margin)) for i in kept])
    dropped = len(train_records) - len(kept)
    print(f"[rm] {len(train_pairs)} train pairs, {len(val_pairs)} held-out pairs "
          f"({dropped} + {len(val_records) - len(val_kept)} longer than {max_len} tokens dropped)", file=sys.stderr)

    # Loss: Bradley-Terry on one concatenated forward.
    def micro_batch(step, i):
        draw = distributed.shard_index(step * args.grad_accum + i)  # torchrun: rank r of W takes every W-th draw
        index = pair_indices(len(train_pairs), args.batch_size, args.seed, draw)
        return {**reward_batch([train_pairs[k] for k in index], tok.pad_id), "margin": margins[index]}

    def loss_fn(batch):
        batch = {k: v.to(args.device) for k, v in batch.items()}
        chosen, rejected = score_batch(rm, batch)
        margin = batch["margin"] if bool((batch["margin"] != 0).any()) else None
        return rm_objective(chosen, rejected, margin, args.center_coef)

    def evaluate(pairs, kinds):  # kinds: each pair's meta.kind (None where the data has none)
        scores = score_pairs(rm, pairs, tok.pad_id, device=args.device)
        out = {"pair_accuracy": pair_accuracy(scores[:, 0], scores[:, 1]),
               "reward_mean": scores.mean().item(), "reward_std": scores.std().item() if scores.numel() > 1 else 0.0}
        for kind in sorted({k for k in kinds if isinstance(k, str)}):
            rows = torch.tensor([k == kind for k in kinds])
            out[f"pair_accuracy_{kind}"] = pair_accuracy(scores[rows, 0], scores[rows, 1])
        return out

    # Loop and save: the model as every stage does, the head beside it.
    optimizer = make_optimizer(rm, args.lr)
    start = common.resume_step(args, optimizer)

    def save(step):  # the head goes into the same checkpoint unit as the model
        common.save_stage(model, tok, args, optimizer, step, heads={HEAD_FILE: rm.head}, value_head=HEAD_FILE)

    net = distributed.wrap(rm)  # DDP under torchrun: loss_fn runs inside its forward
    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            rm.train()
            lr = set_lr(optimizer, step, args)
            micro = [micro_batch(step, i) for i in range(args.grad_accum)]
            acc = ItemWeighted([len(b["margin"]) for b in micro])
            for j, b in enumerate(micro):  # gradients are synced over the ranks on the last one only
                acc.backward(*net(loss_fn, b, sync=j == len(micro) - 1))
            record = acc.result()
            record.update(lr=lr, grad_norm=clip_and_step(optimizer, record["loss"], step))
            progress.log(step, record, items=acc.total, evaluate=lambda: evaluate(*val))
    save(args.steps)

    metrics = common.held_out(args, model, tok, lambda split: evaluate(*split), val, test, general=False)
    if not all(math.isfinite(v) for v in metrics.values()):
        raise SystemExit(f"[rm] held-out rewards are not finite: {metrics}")
    return common.finish(args, {**metrics, "train_pairs": len(train_pairs), "dropped_pairs": dropped}, started)
