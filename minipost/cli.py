"""The command line of train.py: common flags, each stage's own flags, and the chain of
default checkpoints (a stage whose input is missing builds it first, with the defaults).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# stage name -> (module in minipost.stages, the stage whose output is its default --init)
STAGES: dict[str, tuple[str, str | None]] = {
    "pretrain": ("pretrain", None),
    "cpt": ("pretrain", "pretrain"),
    "sft": ("sft", "pretrain"),
    "probe": ("probe", "pretrain"),
    "rm": ("reward", "sft"),
    "dpo": ("dpo", "sft"),
    "grpo": ("rl", "sft"),
    "rloo": ("rl", "sft"),
    "ppo": ("ppo", "sft"),
    "all": ("workflow", None),
    "export": ("export", None),
}
PEFT_METHODS = ("none", "lora", "qlora", "prefix", "prompt", "adapter")
OUT_ROOT = Path("out")


def stage_module(stage: str):
    return importlib.import_module(f"minipost.stages.{STAGES[stage][0]}")


def build_parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=f"minipost: run the {stage!r} stage")
    p.add_argument("--stage", required=True, choices=list(STAGES))
    p.add_argument("--out", type=Path, default=None, help="output directory (default out/STAGE)")
    p.add_argument("--init", type=Path, default=None, help="checkpoint to start from (default: the previous stage's output); also "
                   "smollm2, FILE.gguf or a Hugging Face Llama directory")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="examples (or rows) per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warmup steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 on machines with 2 or fewer cores, else torch's choice)")
    p.add_argument("--preset", default="small", help="model preset for a model built from scratch (tiny, small, base)")
    p.add_argument("--kernels", default="auto", choices=("auto", "torch", "triton"))
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end and on Ctrl-C)")
    p.add_argument("--max-eval", type=int, default=200, help="held-out examples used by generation metrics")
    p.add_argument("--interrupt-at", type=int, default=None, help=argparse.SUPPRESS)
    g = p.add_argument_group("parameter-efficient fine-tuning")
    g.add_argument("--peft", default="none", choices=PEFT_METHODS)
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    g.add_argument("--rslora", action="store_true")
    g.add_argument("--n-virtual", type=int, default=16)
    g.add_argument("--prefix-projection", action="store_true")
    g.add_argument("--prompt-init", default="random", help="prompt tuning init: random, vocab, or a text")
    g.add_argument("--bottleneck", type=int, default=32)
    module = stage_module(stage)
    module.add_args(p, stage)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage")
    known, _ = pre.parse_known_args(argv)
    if known.stage is None or known.stage not in STAGES:
        msg = "--stage is required" if known.stage is None else f"unknown stage {known.stage!r}"
        raise SystemExit(f"train.py: error: {msg}; choose one of: {', '.join(STAGES)}")
    args = build_parser(known.stage).parse_args(argv)
    if args.out is None:
        args.out = OUT_ROOT / args.stage
    if args.init is None and STAGES[args.stage][1] is not None:
        args.init = OUT_ROOT / STAGES[args.stage][1]
    if args.resume and args.init is not None and Path(args.init).resolve() == Path(args.out).resolve():
        raise SystemExit("train.py: error: --init and --out are the same directory")
    for name in ("steps", "batch_size", "grad_accum", "log_every", "max_eval"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise SystemExit(f"train.py: error: --{name.replace('_', '-')} must be at least 1, got {v}")
    return args


def ensure_stage_output(args: argparse.Namespace) -> None:
    """If --init is the default output of an earlier stage and it is missing, build it."""
    init = args.init
    from minipost.pretrained import is_pretrained_source

    if init is None or (Path(init) / "config.json").is_file() or is_pretrained_source(init):
        return
    upstream = STAGES[args.stage][1]
    if upstream is None or Path(init).resolve() != (OUT_ROOT / upstream).resolve():
        raise SystemExit(f"train.py: error: --init {init} has no config.json (not a checkpoint directory)")
    print(f"[{args.stage}] {init} is missing: building it first with the defaults "
          f"(python train.py --stage {upstream})", file=sys.stderr)
    run([
        "--stage", upstream, "--seed", str(args.seed), "--device", args.device,
        "--preset", args.preset, "--kernels", args.kernels,
    ])


def set_threads(threads: int | None) -> None:
    """On a 2-core machine one thread measured 5.7x faster than two for the default model
    (0.88 vs 5.1 s per step): two OpenMP threads fight everything else for the cores."""
    import os

    import torch

    if threads is None and (os.cpu_count() or 1) <= 2:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def run(argv: list[str]) -> dict:
    args = parse(argv)
    from minipost import distributed

    # Under torchrun: join the process group; each process takes its own GPU (minipost/distributed.py).
    args.device = distributed.init(args.device)
    if distributed.is_distributed():
        # The built-in data is generated on first use; one rank writes it, the others wait.
        if distributed.is_main():
            from minipost import data

            data.builtin("sft_train")
        distributed.barrier()
    ensure_stage_output(args)
    from minipost import backend

    backend.set_kernels(args.kernels, args.device)
    return stage_module(args.stage).run(args)
