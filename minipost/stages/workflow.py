"""The whole adaptation workflow in one command (`--stage all`):

    tokenizer -> pretrain -> cpt (with replay) -> sft -> rm -> dpo -> grpo

Each policy stage starts from the previous one's checkpoint (the reward model branches off
the SFT model). A stage whose eval.json already exists is skipped unless --force, so a
second run only rebuilds the report. `--stages a,b,c` runs a custom chain. --peft applies
to the post-training stages (sft onwards); --seed, --device, --preset, --kernels to all.

With --init (a real model: `--init smollm2`) there is nothing to pretrain: the chain is

    sft -> rm -> dpo -> grpo

from that model, in out/RECIPE/ (out/smollm2/ for the smollm2 recipe, out/from-init/
without one), so the built-in model's runs in out/ are neither skipped over nor replaced.
--out ROOT puts the chain's stages in ROOT/STAGE instead.
Each stage gets --recipe (minipost/recipes.py) and so the recipe's defaults.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from minipost import cli, distributed
from minipost.report import write_report

DEFAULT_CHAIN = ("pretrain", "cpt", "sft", "rm", "dpo", "grpo")
FROM_INIT_CHAIN = ("sft", "rm", "dpo", "grpo")  # --init given: a trained model, no pretraining
POST_TRAINING = ("sft", "rm", "dpo", "grpo", "rloo", "ppo")
BRANCHES = ("rm", "probe")  # stages that are not policies: the chain does not continue from them


def add_args(p, stage):
    p.add_argument("--stages", default=None,
                   help=f"comma-separated chain of stages (None: {','.join(DEFAULT_CHAIN)}, or "
                        f"{','.join(FROM_INIT_CHAIN)} with --init)")
    p.add_argument("--force", action="store_true", help="re-run stages whose outputs exist")


def run(args):
    stages = args.stages or ",".join(DEFAULT_CHAIN if args.init is None else FROM_INIT_CHAIN)
    chain = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in chain if s not in cli.STAGES or s == "all"]
    if bad:
        raise SystemExit(f"train.py: error: unknown stage(s) in --stages: {bad}; choose from "
                         f"{[s for s in cli.STAGES if s != 'all']}")
    root = default_root(args) if args.out is None else Path(args.out)
    started = time.time()
    previous = None
    for stage in chain:
        out = root / stage
        if (out / "eval.json").is_file() and not args.force:
            print(f"[all] {stage}: {out}/eval.json exists, skipping (--force re-runs it)", file=sys.stderr)
        else:
            argv = ["--stage", stage, "--out", str(out), "--seed", str(args.seed), "--device", args.device,
                    "--preset", args.preset, "--kernels", args.kernels, "--recipe", args.recipe]
            if previous is not None:
                argv += ["--init", str(root / previous)]
            elif args.init is not None:  # the first stage starts from the given model
                argv += ["--init", str(args.init)]
            if stage in POST_TRAINING and args.peft != "none":
                argv += peft_flags(args)
            print(f"[all] {stage}: python train.py {' '.join(argv)}", file=sys.stderr)
            cli.run(argv)
        if stage not in BRANCHES:
            previous = stage
    if distributed.is_main():
        path = write_report(root)
        print(f"[all] done in {time.time() - started:.0f}s; report: {path}")
    return {}


def default_root(args) -> Path:
    """out/ for the built-in chain; out/RECIPE/ (or out/from-init/) for a chain from --init."""
    if args.init is None:
        return cli.OUT_ROOT
    return cli.OUT_ROOT / (args.recipe if args.recipe != "none" else "from-init")


def peft_flags(args) -> list[str]:
    flags = ["--peft", args.peft, "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha),
             "--lora-targets", args.lora_targets, "--n-virtual", str(args.n_virtual),
             "--bottleneck", str(args.bottleneck)]
    return flags + (["--rslora"] if args.rslora else [])
