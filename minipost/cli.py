"""The command line of train.py: common flags, each stage's own flags, and the chain of
default checkpoints (a stage whose input is missing builds it first, with the defaults).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from minipost import recipes
from minipost.peft.settings import METHODS, AdapterSettings, LoRASettings, PromptSettings

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
    "bon": ("bon", "sft"),
    "merge": ("merge", None),
    "chat": ("chat", "sft"),
    "export": ("export", None),
    "all": ("workflow", None),
}
# one line each for `python train.py --help`
STAGE_HELP = {
    "pretrain": "train the tokenizer and a small GPT from scratch on the general corpus",
    "cpt": "continual pretraining on the new-domain corpus, with replay of general text",
    "sft": "supervised fine-tuning on support dialogues (loss masks, packing)",
    "probe": "linear probe on the frozen model's features (message intent)",
    "rm": "reward model: Bradley-Terry on preference pairs",
    "dpo": "direct preference optimization against the SFT model",
    "grpo": "GRPO: RL from verifiable rewards with group-relative advantages",
    "rloo": "RLOO: RL from verifiable rewards with a leave-one-out baseline",
    "ppo": "PPO with a learned critic (value head) and GAE",
    "bon": "best-of-n against a reward model: proxy and gold score against the analytic KL",
    "merge": "merge checkpoints: linear (WiSE-FT), task arithmetic or TIES",
    "chat": "talk to a trained model (streaming, multi-turn; --prompt answers once)",
    "export": "write a run as a Hugging Face Llama directory (--format hf) or a PEFT adapter (--format peft)",
    "all": "the whole chain pretrain -> cpt -> sft -> rm -> dpo -> grpo, then the report",
}
PEFT_METHODS = tuple(m for m in METHODS if m != "probe")  # the probe is a stage of its own
OUT_ROOT = Path("out")


def overview() -> str:
    """The text of `python train.py --help`: the stages, one line each."""
    width = max(len(s) for s in STAGES)
    lines = ["usage: python train.py --stage STAGE [flags]   (python train.py --stage STAGE --help: its flags)",
             "", "stages:"]
    lines += [f"  {s:<{width}}  {STAGE_HELP[s]}" for s in STAGES]
    return "\n".join(lines)


def stage_module(stage: str):
    return importlib.import_module(f"minipost.stages.{STAGES[stage][0]}")


def build_parser(stage: str, recipe: str = recipes.NONE) -> argparse.ArgumentParser:
    """The stage's parser, its defaults replaced by the recipe's (minipost/recipes.py)."""
    p = argparse.ArgumentParser(prog="train.py", description=f"minipost: {stage}: {STAGE_HELP[stage]}",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGES), help="the stage to run")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (None: out/STAGE; for --stage all the chain's root, None: out/, "
                        "or out/RECIPE/ with --init)")
    p.add_argument("--init", type=Path, default=None,
                   help="checkpoint to start from (None: the previous stage's output); also smollm2, "
                        "FILE.gguf or a Hugging Face Llama directory")
    p.add_argument("--recipe", default=recipes.AUTO, choices=recipes.CHOICES,
                   help="preset of defaults for a real model (minipost/recipes.py); auto: smollm2 when --init "
                        "is smollm2 or a run trained from it, else none (the stage's own defaults)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="examples (or rows) per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warmup steps (at most a tenth of --steps unless given)")
    p.add_argument("--seed", type=int, default=1234, help="seed of every random draw (minipost/seeding.py)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (None: 1 on machines with 2 or fewer cores, else torch's choice)")
    p.add_argument("--preset", default="small", help="model preset for a model built from scratch (tiny, small, base)")
    p.add_argument("--kernels", default="auto", choices=("auto", "torch", "triton"),
                   help="attention/LoRA kernels (auto: triton on CUDA)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="matmul precision: bf16 autocast (float32 weights, optimizer, losses, log-probs), fp32, "
                        "or auto = bf16 for models of 20M+ parameters on a CPU with AVX512-BF16/AMX or a bf16 GPU, else fp32")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run of another stage or configuration in --out")
    p.add_argument("--log-every", type=int, default=10, help="progress-bar and throughput update every N steps")
    p.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end and on Ctrl-C)")
    p.add_argument("--max-eval", type=int, default=200, help="held-out examples used by generation metrics, SFT's held-out loss and the "
                        "held-out preference pairs of DPO and the RM")
    p.add_argument("--interrupt-at", type=int, default=None, help=argparse.SUPPRESS)
    g = p.add_argument_group("parameter-efficient fine-tuning")
    g.add_argument("--peft", default="none", choices=PEFT_METHODS, help="parameter-efficient method (none: full)")
    # The defaults are the methods' own (minipost/peft/settings.py).
    g.add_argument("--lora-r", type=int, default=LoRASettings.r, help="LoRA rank")
    g.add_argument("--lora-alpha", type=float, default=float(LoRASettings.alpha),
                   help="LoRA scale numerator (scaling alpha / r)")
    g.add_argument("--lora-dropout", type=float, default=LoRASettings.dropout,
                   help="dropout on the LoRA branch's input")
    g.add_argument("--lora-targets", default=",".join(LoRASettings.targets),
                   help="comma-separated linear layers that get LoRA")
    g.add_argument("--rslora", action="store_true", help="rank-stabilised scaling alpha / sqrt(r)")
    g.add_argument("--n-virtual", type=int, default=PromptSettings.n_virtual,
                   help="virtual tokens of prefix / prompt tuning")
    g.add_argument("--prefix-projection", action="store_true", help="prefix tuning through an MLP")
    g.add_argument("--prompt-init", default=PromptSettings.init, help="prompt tuning init: random, vocab, or a text")
    g.add_argument("--bottleneck", type=int, default=AdapterSettings.bottleneck,
                   help="width of the bottleneck adapters")
    module = stage_module(stage)
    module.add_args(p, stage)
    p.set_defaults(**recipes.defaults(recipe, stage))  # a flag given on the command line still wins
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage")
    pre.add_argument("--init")
    pre.add_argument("--recipe", default=recipes.AUTO)
    known, _ = pre.parse_known_args(argv)
    if known.stage is None and any(a in ("-h", "--help") for a in argv):
        print(overview())
        raise SystemExit(0)
    if known.stage is None or known.stage not in STAGES:
        msg = "--stage is required" if known.stage is None else f"unknown stage {known.stage!r}"
        raise SystemExit(f"train.py: error: {msg}; choose one of: {', '.join(STAGES)}")
    upstream = STAGES[known.stage][1]
    recipe = recipes.resolve(known.recipe, known.init or (OUT_ROOT / upstream if upstream else None))
    args = build_parser(known.stage, recipe).parse_args(argv)
    args.recipe = recipe  # the one that applied, for the stages that pass it on (--stage all)
    if args.out is None and args.stage != "all":  # the workflow picks its own root (workflow.py)
        args.out = OUT_ROOT / args.stage
    if args.init is None and STAGES[args.stage][1] is not None:
        args.init = OUT_ROOT / STAGES[args.stage][1]
    for name in ("steps", "batch_size", "grad_accum", "log_every", "max_eval"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise SystemExit(f"train.py: error: --{name.replace('_', '-')} must be at least 1, got {v}")
    if getattr(args, "warmup", None) is not None and args.steps is not None:
        cap_warmup(args, explicit=any(a == "--warmup" or a.startswith("--warmup=") for a in argv))
    from minipost import validate

    validate.validate_args(args)  # every range, --device and --lora-targets, before anything runs
    return args


def cap_warmup(args: argparse.Namespace, explicit: bool) -> None:
    """Warmup never exceeds the run: an explicit --warmup larger than --steps is an error; a
    stage default is capped at a tenth of the steps (a short test run is not all warmup)."""
    if args.warmup < 0:
        raise SystemExit(f"train.py: error: --warmup must be >= 0, got {args.warmup}")
    if explicit:
        if args.warmup > args.steps:
            raise SystemExit(f"train.py: error: --warmup {args.warmup} is longer than the run (--steps {args.steps})")
    elif args.warmup > args.steps // 10:
        print(f"[{args.stage}] warmup {args.warmup} capped at {args.steps // 10} (a tenth of --steps {args.steps}; "
              f"pass --warmup to choose)", file=sys.stderr)
        args.warmup = args.steps // 10


def ensure_stage_output(args: argparse.Namespace) -> None:
    """If --init is the default output of an earlier stage and it is missing, build it."""
    init = args.init
    from minipost.pretrained import is_pretrained_source

    from minipost.checkpoint import current_checkpoint

    if init is None or is_pretrained_source(init) or current_checkpoint(init) is not None:
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


def check_out(args: argparse.Namespace) -> None:
    """Before anything trains: --out must not be (or hold) an input, must hold this run when
    resuming (a previous run of the same stage and config is replaced whole, another only with
    --overwrite), and must be writable."""
    from minipost import run_dir

    if args.stage in ("all", "chat"):  # the workflow checks each stage's --out; chat writes none
        return
    if args.stage == "export":  # its --out is a Hugging Face directory, not a run
        return run_dir.check_writable(args.out)
    base = str(args.init) if args.init is not None else None
    peft = "probe" if args.stage == "probe" else args.peft  # what the run records (probe.py sets it)
    run_dir.check_out_dir(args.out, args.init, args.stage, {"peft": peft, "base": base},
                          args.resume, args.overwrite)
    run_dir.check_writable(args.out)


def set_threads(threads: int | None) -> None:
    """On a 2-core machine one thread measured 5.7x faster than two for the default model
    (0.88 vs 5.1 s per step): two OpenMP threads fight everything else for the cores. SmolLM2
    too: on the shared 2-core machine its held-out evaluation had not finished after 20 minutes
    with two threads and took about 2 with one. With two threads a run still repeats itself
    bit for bit: the one op found to add in a varying order (a gather's backward, issue #15)
    is now an index_select in rollout.py."""
    import os

    import torch

    if threads is None and (os.cpu_count() or 1) <= 2:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def run(argv: list[str]) -> dict:
    args = parse(argv)
    set_threads(args.threads)
    from minipost import backend

    backend.reuse_freed_memory()  # before the first large tensor (backend.py: 20% of a step)
    from minipost import distributed

    # Under torchrun: join the process group; each process takes its own GPU (minipost/distributed.py).
    args.device = distributed.init(args.device)
    if distributed.is_distributed():
        # The built-in data is generated on first use; one rank writes it, the others wait.
        if distributed.is_main():
            from minipost import data

            data.builtin("sft_train")
        distributed.barrier()
    if distributed.is_main():
        check_out(args)
    distributed.barrier()
    ensure_stage_output(args)
    backend.set_kernels(args.kernels, args.device)
    backend.set_precision(args.precision, args.device)
    if args.precision == "bf16" and not backend.bf16_supported(args.device) and distributed.is_main():
        print(backend.EMULATED_BF16, file=sys.stderr)
    return stage_module(args.stage).run(args)
