"""Data-parallel training on PyTorch's own engine: torch.distributed + DistributedDataParallel.

    torchrun --nproc_per_node=N train.py --stage sft ...        (one machine, N processes)

torchrun starts N copies of train.py and tells each one its place through environment
variables: RANK (0 .. WORLD_SIZE-1 over all machines), LOCAL_RANK (0 .. N-1 on this
machine), WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without them (plain `python train.py`)
nothing here does anything: the process is rank 0 of a world of 1, and every function
returns its input or the single-process answer.

Data parallelism (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training"): every process holds a full copy of the model and trains on its own
share of each batch. DDP broadcasts rank 0's weights once at the start and, during the
backward pass, all-reduces the gradients (their MEAN over the ranks) in buckets that
overlap with the rest of the backward, so every copy takes the same optimizer step and
the copies never drift apart. The pieces of minipost that take part:

- The global batch of one optimizer step is batch_size x grad_accum x world_size:
  --batch-size is per process. Rank r takes micro-batch number k * world_size + r of its
  stage's data order (shard_index), so 2 processes with batch B see exactly the examples
  one process with batch 2B sees.
- The loss stays the mean over the items (tokens, pairs) of the GLOBAL batch, not a mean of
  per-rank means: training.ItemWeighted sums the item counts of all ranks before the backward
  (all_sum) and multiplies each rank's loss by world_size to undo DDP's averaging.
- Logged numbers are reduced over the ranks (sums of sums in ItemWeighted, means of the RL
  stages' per-rank means); only rank 0 writes checkpoints, metrics.jsonl and eval.json and
  shows the progress bar (is_main).
- Evaluation runs on every rank, on identical weights, so every rank gets the same numbers
  and only rank 0 writes them. It costs no wall time over rank-0-only evaluation (the other
  ranks would wait at a barrier) and cannot run into a collective's timeout during a long
  evaluation.
- RL stages: each rank samples its share of the step's prompts (shard) with its own
  sampling seed; a prompt's whole group of completions lives on one rank, so the group
  statistics (GRPO's mean and std, RLOO's leave-one-out baseline) never span ranks. The
  batch-wide statistics do not either: GRPO's --scale-rewards batch and PPO's advantage
  whitening use the rank's own rollout batch, not the union of all ranks' batches, and a
  PPO minibatch loss is the mean of the ranks' own token means (as under TRL with
  accelerate). --prompts-per-step is per process, like --batch-size.

Deviation from the textbook `model = DDP(model); loss = f(model(x))`: DDP here wraps a small
module that holds the trained modules and whose forward runs a function given at call time
(the stage's loss function). The stages keep calling their plain model, possibly several
times per step (RL shares a prompt's KV cache between its completions), and trained parts
outside the GPT (the reward model's and PPO's value heads) are synced by the same DDP. What
DDP needs is only that the forward pass producing the loss runs inside its forward call;
which Python object the forward belongs to does not matter to it.
"""
from __future__ import annotations

import atexit
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def launched() -> bool:
    """True in a process started by torchrun (WORLD_SIZE in the environment)."""
    return "WORLD_SIZE" in os.environ


def init(device: str = "cpu") -> str:
    """Join the process group that torchrun describes; return the device this process trains on.

    Backend: nccl when training on CUDA, gloo otherwise (CPU). Each process of a machine
    takes its own GPU: a CUDA device becomes cuda:LOCAL_RANK. Safe to call again (a stage
    that builds its missing input stage first goes through the command line twice); a
    no-op returning `device` unchanged outside torchrun.
    """
    if not launched():
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(_shutdown)
    return device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0: the one process that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ----------------------------------------------------------------------------- data shards

def shard_index(k: int) -> int:
    """Rank r's number for the k-th micro-batch of its own: k * world_size + r.

    With batches cut from one data order, the global micro-batch k (of size B * world_size)
    is the union of the per-rank micro-batches k * world_size + r (of size B). (Exactly so
    while an epoch's examples divide evenly into batches: otherwise the epoch's last, short
    batch is split differently.)
    """
    return k * world_size() + rank()


def shard(items: list) -> list:
    """This rank's contiguous share of items (whose length must divide by world_size)."""
    n, w = len(items), world_size()
    if n % w:
        raise ValueError(f"{n} items do not split evenly over {w} processes")
    per = n // w
    return items[rank() * per: (rank() + 1) * per]


# ----------------------------------------------------------------------------- reductions

def _reduce(values: list[float]) -> list[float]:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_sum(x: float) -> float:
    """The sum of x over all ranks (x itself in one process)."""
    return _reduce([float(x)])[0] if is_distributed() else x


def sum_across_ranks(record: dict) -> dict:
    """Every number of record summed over the ranks, in one all-reduce (the dict itself in
    one process). Every rank must pass the same keys in the same order."""
    if not is_distributed():
        return record
    keys = [k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {**record, **dict(zip(keys, _reduce([float(record[k]) for k in keys])))}


def mean_across_ranks(record: dict) -> dict:
    """Every number of record averaged over the ranks: exact for means over equal-sized
    per-rank shares (reward mean, accuracy, loss); for a std it is the mean of the per-rank
    stds. The dict itself in one process."""
    if not is_distributed():
        return record
    summed = sum_across_ranks(record)
    w = world_size()
    return {k: (v / w if isinstance(record[k], (int, float)) and not isinstance(record[k], bool) else v)
            for k, v in summed.items()}


# ----------------------------------------------------------------------------- gradients

class _Trained(nn.Module):
    """The trained modules under one parent (so one DDP sees all their parameters); its
    forward runs the function it is given."""

    def __init__(self, modules):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class Synced:
    """Runs the forward pass of a training step so that the backward syncs the gradients of
    `modules` over the ranks: synced(fn, *args, sync=True) -> fn(*args).

    sync=False (the micro-batches before the last of an accumulated step) runs inside
    DDP's no_sync: gradients only accumulate locally, and the last micro-batch's backward
    all-reduces the accumulated sum once. DDP takes the sync decision during the forward
    call, so the backward may follow outside this call. In one process (or given no
    modules) it is just fn(*args).
    """

    def __init__(self, *modules: nn.Module):
        self.ddp = None
        if is_distributed() and modules:
            holder = _Trained(modules)
            device = next(holder.parameters()).device
            # broadcast_buffers=False: every rank builds the same buffers (RoPE tables,
            # quantized base weights) from the same checkpoint; DDP's start-up broadcast
            # already made them rank 0's. find_unused_parameters=True: a trained parameter
            # may get no gradient in some stage (an untied lm_head under a reward model);
            # DDP then finds it by walking the graph back from fn's outputs, so fn must
            # return everything the loss is computed from.
            self.ddp = DistributedDataParallel(holder, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=False, find_unused_parameters=True)

    def __call__(self, fn, *args, sync: bool = True, **kwargs):
        if self.ddp is None:
            return fn(*args, **kwargs)
        with nullcontext() if sync else self.ddp.no_sync():
            return self.ddp(fn, *args, **kwargs)


def wrap(*modules: nn.Module) -> Synced:
    """DDP over the trained modules under torchrun; a plain function call otherwise."""
    return Synced(*modules)
