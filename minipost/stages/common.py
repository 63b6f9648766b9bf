"""What every stage does the same way: seed, load the starting checkpoint and tokenizer,
apply PEFT, save (model or adapter, heads, config, tokenizer, resume state), write eval.json.

Every save is one checkpoint unit (checkpoint.save_checkpoint): out/step-N/ holds the step's
files and out/checkpoint.json names it, so a kill mid-save leaves the previous unit current.
A checkpoint directory is self-contained: model.safetensors (or adapter.safetensors +
adapter.json on top of the base named in config.json), config.json and tokenizer.model
(a real model's run: tokenizer.json, tokenizer_config.json and template.json). Runs are read
through checkpoint.checkpoint_dir, which also reads the single-directory layout of earlier
runs. --init may also name a real model ("smollm2", FILE.gguf, a Hugging Face directory;
minipost/pretrained.py).
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from minipost import checkpoint, distributed, pretrained
# The held-out rules (test split, general questions) live in minipost/heldout.py; the stages
# call them through here.
from minipost.heldout import (add_test_arg, as_before, general_numbers, held_out, on_pretrained_base,  # noqa: F401
                              test_name, test_path)
from minipost.stages import rl_prompts
from minipost.tokenizer import Tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(ckpt_dir: str | Path):
    """The run's own tokenizer: tokenizer.model (minipost's) or tokenizer.json (a real model's)."""
    if (Path(ckpt_dir) / "tokenizer.json").is_file():
        from minipost.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_dir(ckpt_dir)
    from minipost.validate import load_tokenizer_checked

    return load_tokenizer_checked(Path(ckpt_dir) / "tokenizer.model")  # a garbage file: CheckpointError


def load_stage_model(ckpt_dir: str | Path, device="cpu"):
    """A stage's output as a plain trainable GPT -> (model, tokenizer, config dict).

    A LoRA checkpoint is merged into its base and unwrapped, so the next stage starts
    from ordinary weights (and may put its own adapter on top). Other PEFT outputs are
    not merged into weights; chain stages from a full or LoRA checkpoint instead.
    """
    if pretrained.is_pretrained_source(ckpt_dir):  # "smollm2", FILE.gguf, a Hugging Face directory
        model, tok = pretrained.load_pretrained(ckpt_dir)
        return model.train().to(device), tok, {"base": pretrained.base_reference(ckpt_dir)}
    ckpt_dir = checkpoint.checkpoint_dir(ckpt_dir)  # the current unit (or an earlier run's directory)
    info = checkpoint.read_json(ckpt_dir / "config.json")
    if (ckpt_dir / "model.safetensors").is_file():
        model, info = checkpoint.load_model(ckpt_dir, device)
    elif (ckpt_dir / "adapter.safetensors").is_file():
        from minipost import peft

        model, _, _ = load_stage_model(info["base"], device)
        peft.load_adapter(model, ckpt_dir)
        method = checkpoint.read_json(ckpt_dir / "adapter.json").get("method")
        if method not in ("lora",):
            raise checkpoint.CheckpointError(
                f"{ckpt_dir}: a {method} adapter cannot be folded into the weights; start the next "
                f"stage from a full or LoRA checkpoint")
        peft.merge_and_unwrap(model)
    else:
        raise checkpoint.CheckpointError(f"{ckpt_dir}: neither model.safetensors nor adapter.safetensors")
    for p in model.parameters():
        p.requires_grad_(True)
    return model.to(device), load_tokenizer(ckpt_dir), info


def prepare_model(args, fresh=None):
    """The model a stage trains -> (model, tokenizer).

    Starts from --init (or `fresh()` -> (model, tokenizer) when there is no init), applies
    --peft, and with --resume loads the weights saved in --out on top.
    """
    if args.init is None:
        model, tok = fresh()
    else:
        model, tok, _ = load_stage_model(args.init, args.device)
    apply_peft_from_args(model, args, tok)
    if args.resume:
        out = checkpoint.checkpoint_dir(args.out)  # weights and state.* below come from the same unit
        if (out / "adapter.safetensors").is_file():
            from minipost import peft

            peft.load_adapter(model, out)
        else:
            tensors = checkpoint.load_tensors(out / "model.safetensors")
            if model.cfg.tie_embeddings:
                tensors["lm_head.weight"] = tensors["tok_emb.weight"]
            checkpoint.load_into(model, tensors, str(out / "model.safetensors"))
    from minipost.validate import check_against_model

    check_against_model(args, model.cfg)  # --seq-len / --max-len within the model's context
    return model.to(args.device), tok


def apply_peft_from_args(model, args, tokenizer=None) -> str:
    """Apply --peft (if any) and print the trainable share; returns the method name."""
    if args.peft != "none":
        from minipost import peft

        peft.apply_peft(model, args.peft, tokenizer=tokenizer, **peft_settings(args))
    from minipost.peft import trainable_parameters

    n_train, n_total = trainable_parameters(model)
    args.trainable_params, args.total_params = n_train, n_total  # for eval.json and the report
    print(f"[{args.stage}] trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)"
          f" peft={args.peft}", file=sys.stderr)
    return args.peft


def peft_settings(args) -> dict:
    """The --lora-* / --n-virtual / --bottleneck flags that belong to args.peft."""
    if args.peft in ("lora", "qlora"):
        return dict(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                    targets=tuple(args.lora_targets.split(",")), rslora=args.rslora)
    if args.peft == "prefix":
        return dict(n_virtual=args.n_virtual, projection=args.prefix_projection)
    if args.peft == "prompt":
        return dict(n_virtual=args.n_virtual, init=args.prompt_init)
    if args.peft == "adapter":
        return dict(bottleneck=args.bottleneck)
    return {}


def save_stage(model, tokenizer, args, optimizer=None, step: int | None = None,
               heads: dict[str, torch.nn.Module] | None = None, **info) -> None:
    """Write the stage's checkpoint into args.out as one unit of step `step` (0: no training):
    the weights (or only the adapter), `heads` (file name -> module, e.g. the reward model's
    value head), config.json, the tokenizer and, if an optimizer is given, its state and the
    RNG state for --resume. Nothing is written if any of those tensors is NaN or inf, so a
    diverged model never replaces a good checkpoint. Under torchrun only rank 0 writes: the
    ranks hold identical weights."""
    if not distributed.is_main():
        return
    config = {"stage": args.stage, "seed": args.seed, "peft": args.peft,
              "base": pretrained.base_reference(args.init) if args.init is not None else None, **info}
    files = {"config.json": {"model": model.cfg.to_dict(), **config}}
    if args.peft != "none":
        from minipost import peft

        tensors = {peft.ADAPTER_FILE: peft.adapter_tensors(model)}
        files[peft.CONFIG_FILE] = peft.adapter_meta(model)
    else:
        tensors = {"model.safetensors": checkpoint.model_tensors(model)}
    tensors.update({name: head.state_dict() for name, head in (heads or {}).items()})
    # the run loads on its own: tokenizer.model, or tokenizer.json + template.json
    checkpoint.save_checkpoint(args.out, step or 0, tensors, files, optimizer, write_files=tokenizer.save)


def resume_step(args, optimizer) -> int:
    """With --resume, restore optimizer/RNG state from args.out and return the step reached."""
    if not args.resume:
        return 0
    out = Path(args.out)
    if not (checkpoint.checkpoint_dir(out) / "state.json").is_file():
        raise SystemExit(f"train.py: error: --resume but {out} has no state.json (nothing to resume)")
    counters = checkpoint.load_train_state(out, optimizer)  # the current unit's, its step checked
    step = int(counters["step"])
    if distributed.is_main():  # the steps after the checkpoint are replayed: drop their old records
        from minipost.run_dir import truncate_metrics

        truncate_metrics(out / "metrics.jsonl", step)
    print(f"[{args.stage}] resuming from step {step}", file=sys.stderr)
    return step


# ----------------------------------------------------------------------------- RL stages (rl.py, ppo.py)

def add_rl_args(g, group_size: int) -> None:
    """The flags every RL stage shares (GRPO, RLOO, PPO), on the argument group g."""
    rl_prompts.add_args(g)  # --rl-task, --train-file, --val-file, --test-file
    g.add_argument("--group-size", type=int, default=group_size, help="completions sampled per prompt (G, k)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per rollout batch")
    g.add_argument("--max-new-tokens", type=int, default=64, help="completion length limit")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    g.add_argument("--reward-model", type=Path, default=None,
                   help="a --stage rm run: reward = its score of each completion, standardised by the "
                        "held-out reward_mean/reward_std of its eval.json (RLHF; minipost/rm_reward.py)")
    g.add_argument("--reward-fn", nargs="+", default=None, metavar="SPEC",
                   help="reward functions 'module:function' or 'path/file.py:function', "
                        "f(completions, **columns) -> [float] (None: the built-in Minimart task + format rewards)")
    g.add_argument("--reward-weights", nargs="+", type=float, default=None, metavar="W",
                   help="one weight per reward function (None: all 1)")


def rl_reward(args):
    """The reward the RL stages train on -> reward(texts, ended, records) -> [float] (rollout.py):
    --reward-model (the RM's standardised score), else --reward-fn with --reward-weights,
    else the built-in Minimart rewards. A reward function's error is one line naming it."""
    from minipost.reward_fns import RewardFnError, combined_reward, load_reward_fns

    if args.reward_model is not None:
        from minipost.rm_reward import RewardModelScorer, scorer_reward

        scorer = RewardModelScorer(args.reward_model, device=args.device, batch_size=args.batch_size)
        print(f"[{args.stage}] reward: the reward model {args.reward_model}, (r - {scorer.mean:.4g}) / "
              f"{scorer.std:.4g}", file=sys.stderr)
        return scorer_reward(scorer)
    try:
        fns = load_reward_fns(args.reward_fn)
    except RewardFnError as e:
        raise SystemExit(f"train.py: error: {e}") from e

    def reward(texts, ended, records):
        try:
            return combined_reward(fns, args.reward_weights, texts, records, ended)
        except RewardFnError as e:
            raise SystemExit(f"train.py: error: {e}") from e
    return reward


def rl_held_out(model, tok, val: list[dict], args, reward) -> dict:
    """The RL stages' held-out numbers on one split, greedy replies to its prompts: task_accuracy where the
    records have whole-number answers; otherwise reward_mean (the trained reward), and where
    they carry meta.fact gold_mean and the judges of evaluate.judge_replies."""
    from minipost.evaluate import greedy_replies, judge_replies
    from minipost.rollout import gold_scores, task_correct

    replies = greedy_replies(model, tok, [r["prompt"] for r in val], args.max_new_tokens)
    texts, ended = [t for t, _ in replies], [e for _, e in replies]
    correct = task_correct(texts, val)
    if correct is not None and args.reward_model is None and args.reward_fn is None:
        return {"task_accuracy": sum(correct) / max(len(val), 1)}
    out = {"reward_mean": sum(reward(texts, ended, val)) / max(len(val), 1)}
    if correct is not None:
        out["task_accuracy"] = sum(correct) / max(len(val), 1)
    gold = gold_scores(texts, ended, val)
    if gold is not None:
        out["gold_mean"] = sum(gold) / len(gold)
        out.update(judge_replies(replies, val))
    return out


def held_out_record(numbers: dict) -> dict:
    """The held-out numbers as metrics.jsonl keys (--eval-every): val_<name>, numbers only."""
    return {f"val_{k}": v for k, v in numbers.items() if isinstance(v, float)}


def held_out_before(evaluate, args) -> dict:
    """The starting model's held-out numbers as {key}_before (kept in config.json, so --resume reuses them)."""
    if args.resume:
        info = checkpoint.read_json(checkpoint.checkpoint_dir(args.out) / "config.json")
        before = {k: v for k, v in info.items() if k.endswith("_before")}
        if before:
            return before
    before = {f"{k}_before": v for k, v in evaluate().items()}
    shown = ", ".join(f"{k} = {v:.3f}" for k, v in before.items() if isinstance(v, float))
    print(f"[{args.stage}] {shown} on the held-out prompts", file=sys.stderr)
    return before


def rl_setup(args, model, tok, kl_coef: float):
    """What every RL stage sets up before its loop -> (train, val, ref_scorer, reward, held_out):
    the prompts (checked to fit the context), the frozen reference's scorer (None when
    kl_coef is 0), the trained reward (rl_reward) and held_out() -> the current model's
    held-out numbers (val under their names, test as test_*, general questions on a real model)."""
    from minipost.rollout import reference_scorer

    train, val = rl_prompts.load_prompts(args)
    test = rl_prompts.load_test_prompts(args)
    rl_prompts.check_prompts_fit(train, val, tok, model.cfg, args, test)
    ref_scorer = reference_scorer(model, kl_coef, args.batch_size, reference_copy(args, kl_coef))
    reward = rl_reward(args)

    def evaluate():
        return held_out(args, model, tok, lambda split: rl_held_out(model, tok, split, args, reward), val, test)
    return train, val, ref_scorer, reward, evaluate


def reference_copy(args, coef: float):
    """The frozen reference of an RL stage under full fine-tuning: a second copy of --init.
    None under --peft (the policy with adapters off is the reference) or when coef == 0."""
    if coef == 0 or args.peft != "none":
        return None
    return load_stage_model(args.init, args.device)[0]


def step_rollout(model, tok, train: list[dict], step: int, args, reward=None):
    """The Rollout of RL step `step`: --prompts-per-step prompts drawn for the step, --group-size
    completions each. torchrun: each rank takes its share of the prompts and samples them with
    its own generator (rollout.sampling_generator of its shard index)."""
    from minipost.guards import NonFiniteError
    from minipost.rollout import rollout, sampling_generator, step_prompts

    prompts = step_prompts(train, args.prompts_per_step * distributed.world_size(), args.seed, step)
    try:
        return rollout(model, tok, distributed.shard(prompts), args.group_size, args.max_new_tokens,
                       temperature=args.temperature, reward=reward,
                       generator=sampling_generator(args.seed, distributed.shard_index(step), args.device))
    except NonFiniteError as e:  # diverged sampling probabilities: name the step (1-based, as the log does)
        raise e.at(step + 1) from None


def finish(args, metrics: dict, started: float) -> dict:
    """Write eval.json (held-out numbers plus wall time) and print it.

    Under torchrun every rank evaluated the same weights; rank 0 writes, and the others wait
    for it, so no rank goes on (to a next stage that reads args.out) before the files exist.
    """
    metrics = {**metrics, "wall_time_s": round(time.time() - started, 1)}
    if getattr(args, "trainable_params", None) is not None:
        metrics.update(trainable_params=args.trainable_params, total_params=args.total_params)
    if distributed.is_main():
        out = Path(args.out)
        checkpoint.write_json(metrics, out / "eval.json")
        print(f"[{args.stage}] eval: " + json.dumps(metrics))
        try:  # the picture is a courtesy: a plotting problem must never fail a finished run
            from minipost.plots import write_curves

            write_curves(out)
        except Exception as e:  # noqa: BLE001
            print(f"[{args.stage}] warning: curves.png not written ({type(e).__name__}: {e})", file=sys.stderr)
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"[{args.stage}] wrote {out}: {', '.join(files)}")
        print(results_table(metrics))
    distributed.barrier()
    return metrics


def results_table(metrics: dict) -> str:
    """The held-out numbers of eval.json as a small table: metric, value on the validation
    split, the starting model's value where the stage measured it (key_before), and when
    there is a test split the same two on it (test_name(key), test_name(key)_before)."""
    names = [k for k, v in metrics.items() if isinstance(v, float) and k != "wall_time_s"
             and not k.endswith("_before") and not k.startswith("test_")]
    rows = [(k, metrics[k], metrics.get(f"{k}_before"), metrics.get(test_name(k)),
             metrics.get(f"{test_name(k)}_before")) for k in names]
    if not rows:
        return ""
    columns = ["value", "before"] + (["test", "test before"] if any(isinstance(r[3], float) for r in rows) else [])
    width = max(len(k) for k in names)
    cell = lambda v: f"{v:>11.4f}" if isinstance(v, float) else " " * 11  # noqa: E731
    lines = [f"  {'held-out':<{width}}" + "".join(f"  {c:>11}" for c in columns)]
    for k, *values in rows:
        lines.append((f"  {k:<{width}}" + "".join(f"  {cell(v)}" for v in values[: len(columns)])).rstrip())
    return "\n".join(lines)
