"""The pieces every training stage shares: optimizer, learning-rate schedule, the step
loop with gradient accumulation, logging, checkpoints for --resume, and the guards
(Ctrl-C saves before exiting; a non-finite loss stops the run and keeps the last good
checkpoint).

Gradient accumulation weights every item of the accumulated batch equally: the loss
function returns a SUM over its micro-batch and the number of items (trained tokens for
token losses, pairs for DPO); the loop divides every micro-batch's sum by the item count
of the WHOLE accumulated batch. Averaging per-micro-batch means instead would give a
token in a short micro-batch more weight than a token in a long one.

Under torchrun (minipost/distributed.py) the whole batch is that of all ranks: the item
counts are summed over the ranks before the backward, DDP syncs the gradients on the last
micro-batch of a step, and the logged numbers are summed over the ranks, so the loss and
its gradient are the mean over every item of the global batch.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from minipost import checkpoint, distributed


class NonFiniteLoss(RuntimeError):
    pass


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
        self.file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self.file.flush()


def _plain(v):
    if torch.is_tensor(v):
        v = v.item()
    return round(v, 6) if isinstance(v, float) else v


@dataclass
class LoopConfig:
    steps: int
    lr: float
    warmup: int = 0
    schedule: str = "rewarm"
    grad_clip: float = 1.0
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (the stage evaluates)
    save_every: int = 0  # 0 = only at the end and on Ctrl-C
    interrupt_at: int | None = None  # testing aid: behave as if Ctrl-C came after this step


def run_loop(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: LoopConfig,
    micro_batch: Callable[[int, int], object],
    count_items: Callable[[object], float],
    loss_fn: Callable[[object], tuple[torch.Tensor, dict]],
    save: Callable[[int], None],
    log: MetricsLog,
    start_step: int = 0,
    evaluate: Callable[[], dict] | None = None,
    desc: str = "train",
) -> None:
    """Train from start_step to cfg.steps optimizer steps.

    micro_batch(step, i) -> the i-th micro-batch of optimizer step `step` (a function of
    the step, so a resumed run sees exactly the data an uninterrupted one would).
    count_items(batch) -> how many items (trained tokens, pairs) the batch holds.
    loss_fn(batch) -> (loss summed over the batch's items, stats dict of summed values).
    save(step) writes the checkpoint (model and train state) after `step` steps.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    net = distributed.wrap(model)  # DDP under torchrun: loss_fn runs inside its forward
    world = distributed.world_size()
    model.train()
    bar = tqdm(range(start_step, cfg.steps), desc=desc, initial=start_step, total=cfg.steps,
               dynamic_ncols=True, mininterval=1.0, disable=not distributed.is_main())
    completed = start_step
    t_start = t_last = time.time()
    items_since = 0.0
    try:
        for step in bar:
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.schedule)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batches = [micro_batch(step, i) for i in range(cfg.grad_accum)]
            # The items of every rank's micro-batches: the loss is their mean, not a mean of
            # per-rank means (a rank with short examples must not weigh more per token).
            total_items = max(distributed.all_sum(sum(float(count_items(b)) for b in batches)), 1.0)
            loss_value, agg = 0.0, {}
            for j, b in enumerate(batches):
                # Gradients are synced over the ranks on the last micro-batch only.
                loss_sum, stats = net(loss_fn, b, sync=j == len(batches) - 1)
                # One graph in memory at a time; dividing by the whole batch's item count
                # makes the summed gradients those of the full-batch mean. DDP averages the
                # ranks' gradients, so `* world` turns that average back into their sum.
                (loss_sum * world / total_items).backward()
                loss_value += loss_sum.item() / total_items
                for k, v in stats.items():
                    agg[k] = agg.get(k, 0.0) + float(v)
            # Every rank logs (and checks) the same global numbers.
            summed = distributed.sum_across_ranks({"loss": loss_value, **agg})
            loss_value, agg = summed.pop("loss"), summed
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(
                    f"non-finite loss ({loss_value}) at step {step + 1}; stopping without saving, so the "
                    f"last good checkpoint stays. Try a lower --lr or check the data."
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            completed = step + 1
            items_since += total_items
            record = {"step": completed, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                      "elapsed_s": time.time() - t_start}
            record.update({k: v / total_items for k, v in agg.items()})
            if completed % cfg.log_every == 0 or completed == cfg.steps:
                now = time.time()
                record["items_per_s"] = items_since / max(now - t_last, 1e-9)
                t_last, items_since = now, 0.0
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "elapsed_s")},
                                refresh=False)
            if cfg.eval_every and evaluate is not None and completed % cfg.eval_every == 0 and completed < cfg.steps:
                record.update(evaluate())
                model.train()
            log.write(record)
            if cfg.save_every and completed % cfg.save_every == 0 and completed < cfg.steps:
                save(completed)
            if cfg.interrupt_at is not None and completed == cfg.interrupt_at:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        # A step cut short left partial gradients; they are dropped, the finished steps saved.
        optimizer.zero_grad(set_to_none=True)
        if distributed.is_main():  # the one rank that writes (save is a no-op on the others)
            print(f"\ninterrupted: saving a checkpoint after step {completed} (continue with --resume)",
                  file=sys.stderr)
        save(completed)
        raise SystemExit(130)
    bar.close()


def save_checkpoint_with_state(model, optimizer, out_dir: Path, step: int, save_model: Callable[[Path], None]) -> None:
    """The model (or adapter) via save_model, then the optimizer/RNG state for --resume."""
    if not distributed.is_main():  # under torchrun only rank 0 writes
        return
    save_model(out_dir)
    checkpoint.save_train_state(out_dir, optimizer, {"step": step})
