"""The pieces of a training loop that have a rule of their own. Each stage writes its loop
in the open (stages/sft.py is the plainest):

    with Progress(args, start, save, optimizer) as progress:     # Ctrl-C saves, exits 130
        for step in range(start, args.steps):
            lr = set_lr(optimizer, step, args)                    # lr_at: warmup + cosine
            micro = [micro_batch(step, i) for i in range(args.grad_accum)]
            acc = ItemWeighted([n_items(b) for b in micro])
            for j, b in enumerate(micro):
                acc.backward(*net(loss_fn, b, sync=j == len(micro) - 1))   # forward, loss, backward
            record = acc.result()
            record["grad_norm"] = clip_and_step(optimizer, record["loss"], step)
            progress.log(step, {**record, "lr": lr}, items=acc.total)

Gradient accumulation weights every item of the accumulated batch equally (ItemWeighted):
the loss function returns a SUM over its micro-batch, and each micro-batch's sum is divided
by the item count (trained tokens, pairs, sequences) of the WHOLE accumulated batch before
its backward. Averaging per-micro-batch means instead would give a token in a short
micro-batch more weight than a token in a long one.

Under torchrun (minipost/distributed.py) the whole batch is that of all ranks: the item
counts are summed over the ranks before the backward, DDP syncs the gradients on the last
micro-batch of a step (the stage passes sync=...), and since DDP averages the ranks'
gradients, each rank's loss is multiplied by world_size to turn that average back into
their sum. The logged numbers are summed over the ranks, so the loss and its gradient are
the mean over every item of the global batch.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minipost import distributed, guards


# The one error class of a diverged run (minipost/guards.py); the old name stays for callers.
NonFiniteLoss = guards.NonFiniteError


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)):
    """AdamW over the trainable parameters; no weight decay on vectors (norms, biases)."""
    params = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


SCHEDULES = ("cosine", "rewarm", "constant", "infinite", "continue")


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "rewarm", min_ratio: float = 0.1,
          cooldown: float = 0.2) -> float:
    """Learning rate for 0-based `step` of `total`.

    rewarm:   linear warmup from 0 over `warmup` steps, then cosine decay to min_ratio*peak
              (the usual pretraining schedule; for continual pretraining, re-warming a
              decayed model is what Gupta et al. (2023) study).
    cosine:   cosine decay from the peak at step 0, no warmup (continue as if still warm).
    constant: the peak throughout.
    infinite: warmup as rewarm, then the peak held constant, then a linear cooldown over the
              last `cooldown` fraction of the steps, C = round(cooldown * total), down to
              min_ratio*peak at the last step:
                  lr = peak * (1 - (1 - min_ratio) * (step - (total - C) + 1) / C)
              (the "infinite" / warmup-stable-decay schedule of Ibrahim et al. 2024 and
              Hägele et al. 2024: the constant phase can be continued on new data without
              re-warming; only a finished run is cooled down). Warmup wins if the two overlap.
    continue: no warmup, min_ratio*peak throughout: with --lr the pretraining peak, this
              continues at the LR pretraining ended with (Ibrahim et al. 2024's baseline for
              continual pretraining without re-warming).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return peak
    if schedule == "continue":
        return peak * min_ratio
    if schedule in ("rewarm", "infinite") and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "infinite":
        if not 0.0 <= cooldown <= 1.0:
            raise ValueError(f"cooldown must be a fraction in [0, 1], got {cooldown}")
        n_cool = round(cooldown * total)
        into = step - (total - n_cool) + 1  # 1 at the first cooldown step, n_cool at the last
        return peak if into < 1 or n_cool == 0 else peak * (1 - (1 - min_ratio) * min(into, n_cool) / n_cool)
    start = warmup if schedule == "rewarm" else 0
    progress = min(1.0, (step - start) / max(1, total - start))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, step: int, args) -> float:
    """Set every parameter group to lr_at(step) (times the group's own "lr_scale", e.g. PPO's
    value head) from args.steps, args.lr, args.warmup and args.schedule (default rewarm);
    returns the base learning rate."""
    lr = lr_at(step, args.steps, args.lr, args.warmup, getattr(args, "schedule", "rewarm"))
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
    return lr


class ItemWeighted:
    """The backward passes of one optimizer step, weighted so that every item of the whole
    accumulated batch (all micro-batches, all ranks) counts the same.

    items: the item count of each of this rank's micro-batches. backward(loss_sum, stats)
    takes a micro-batch's loss summed over its items and, optionally, stats summed likewise;
    result() -> {"loss": mean loss, stat: mean stat, ...} over the global batch.
    """

    def __init__(self, items):
        # The items of every rank's micro-batches: the loss is their mean, not a mean of
        # per-rank means (a rank with short examples must not weigh more per token).
        self.total = max(distributed.all_sum(sum(float(n) for n in items)), 1.0)
        self.world = distributed.world_size()
        self.loss, self.stats = 0.0, {}

    def backward(self, loss_sum: torch.Tensor, stats: dict | None = None) -> None:
        # One graph in memory at a time; dividing by the whole batch's item count makes the
        # summed gradients those of the full-batch mean. `* world` undoes DDP's averaging.
        (loss_sum * self.world / self.total).backward()
        self.loss += loss_sum.item() / self.total
        for k, v in (stats or {}).items():
            self.stats[k] = self.stats.get(k, 0.0) + float(v)

    def result(self) -> dict:
        summed = distributed.sum_across_ranks({"loss": self.loss, **self.stats})  # every rank: the same numbers
        loss = summed.pop("loss")
        return {"loss": loss, **{k: v / self.total for k, v in summed.items()}}


def clip_and_step(optimizer, loss: float, step: int, max_norm: float = 1.0) -> float:
    """Refuse a non-finite loss or gradient norm (guards.NonFiniteError, before the weights
    change, so the last good checkpoint stays), else clip the gradients' global norm to
    max_norm, take the optimizer step and clear the gradients. Returns the norm before clipping.
    The norm is checked too: one NaN gradient element makes it NaN while the loss is finite."""
    # torchrun: the sums are the same on every rank, so every rank stops together
    guards.check_step(step + 1, loss=distributed.all_sum(loss))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    guards.check_step(step + 1, grad_norm=distributed.all_sum(norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed at once."""

    def __init__(self, path: Path, resume: bool):
        self.file = None
        if distributed.is_main():  # under torchrun only rank 0 writes (the numbers are already reduced)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if resume else "w")

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        # strict JSON: a NaN or inf is written as null (json.dumps would write bare NaN)
        self.file.write(guards.json_record({k: _plain(v) for k, v in record.items()}) + "\n")
        self.file.flush()


def _plain(v):
    if torch.is_tensor(v):
        v = v.item()
    return round(v, 6) if isinstance(v, float) else v


class Progress:
    """What happens around the steps: the progress bar, metrics.jsonl, --eval-every,
    --save-every, --interrupt-at, and the guard.

    As a context manager it is the guard: Ctrl-C (KeyboardInterrupt) inside it drops the
    partial gradients of the step cut short, calls save(finished steps) and exits with
    status 130; --resume then continues from there. log(step, record) after each step.
    """

    def __init__(self, args, start: int, save, optimizer=None):
        self.args, self.save, self.optimizer = args, save, optimizer
        self.completed = start
        self.metrics = MetricsLog(Path(args.out) / "metrics.jsonl", resume=args.resume)
        self.bar = tqdm(total=args.steps, initial=start, desc=args.stage, dynamic_ncols=True, mininterval=1.0,
                        disable=not distributed.is_main())
        self.t_start = self.t_last = time.time()
        self.items_since = 0.0

    def log(self, step: int, record: dict, items: float = 0.0, evaluate=None) -> None:
        """After 0-based `step`: write {"step": step + 1, **record} to metrics.jsonl, with the
        held-out numbers of evaluate() every --eval-every steps, save every --save-every."""
        a = self.args
        self.completed = done = step + 1
        record = {"step": done, **record, "elapsed_s": time.time() - self.t_start}
        self.items_since += items
        if done % a.log_every == 0 or done == a.steps:
            now = time.time()
            if items:
                record["items_per_s"] = self.items_since / max(now - self.t_last, 1e-9)
            self.t_last, self.items_since = now, 0.0
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                  if k not in ("step", "elapsed_s") and isinstance(v, float)}, refresh=False)
        self.bar.update(1)
        if a.eval_every and evaluate is not None and done % a.eval_every == 0 and done < a.steps:
            record.update(evaluate())
        self.metrics.write(record)
        if a.save_every and done % a.save_every == 0 and done < a.steps:
            self.save(done)
        if a.interrupt_at is not None and done == a.interrupt_at:
            raise KeyboardInterrupt  # testing aid: behave as if Ctrl-C came after this step

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.bar.close()
        if kind is not KeyboardInterrupt:
            return False
        if self.optimizer is not None:  # a step cut short left partial gradients
            self.optimizer.zero_grad(set_to_none=True)
        if distributed.is_main():  # the one rank that writes (save is a no-op on the others)
            print(f"\ninterrupted: saving a checkpoint after step {self.completed} (continue with --resume)",
                  file=sys.stderr)
        self.save(self.completed)
        raise SystemExit(130)
