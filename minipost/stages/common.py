"""What every stage does the same way: seed, load the starting checkpoint and tokenizer,
apply PEFT, save (model or adapter, config, tokenizer, resume state), write eval.json.

A checkpoint directory is self-contained: model.safetensors (or adapter.safetensors +
adapter.json on top of the base named in config.json), config.json and tokenizer.model
(a real model's run: tokenizer.json, tokenizer_config.json and template.json). --init may
also name a real model ("smollm2", FILE.gguf, a Hugging Face directory; minipost/pretrained.py).
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from minipost import checkpoint, distributed, pretrained
from minipost.tokenizer import Tokenizer
from minipost.training import LoopConfig, MetricsLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(ckpt_dir: str | Path):
    """The run's own tokenizer: tokenizer.model (minipost's) or tokenizer.json (a real model's)."""
    if (Path(ckpt_dir) / "tokenizer.json").is_file():
        from minipost.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_dir(ckpt_dir)
    return Tokenizer(Path(ckpt_dir) / "tokenizer.model")


def load_stage_model(ckpt_dir: str | Path, device="cpu"):
    """A stage's output as a plain trainable GPT -> (model, tokenizer, config dict).

    A LoRA checkpoint is merged into its base and unwrapped, so the next stage starts
    from ordinary weights (and may put its own adapter on top). Other PEFT outputs are
    not merged into weights; chain stages from a full or LoRA checkpoint instead.
    """
    if pretrained.is_pretrained_source(ckpt_dir):  # "smollm2", FILE.gguf, a Hugging Face directory
        model, tok = pretrained.load_pretrained(ckpt_dir)
        return model.train().to(device), tok, {"base": pretrained.base_reference(ckpt_dir)}
    ckpt_dir = Path(ckpt_dir)
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
        merge_and_unwrap(model)
    else:
        raise checkpoint.CheckpointError(f"{ckpt_dir}: neither model.safetensors nor adapter.safetensors")
    for p in model.parameters():
        p.requires_grad_(True)
    return model.to(device), load_tokenizer(ckpt_dir), info


def merge_and_unwrap(model) -> None:
    """Fold every LoRA update into its base weight and put the plain nn.Linear back."""
    from minipost.peft import LoRALinear, merge_lora

    merge_lora(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.base)
    model.peft_config = None


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
        out = Path(args.out)
        if (out / "adapter.safetensors").is_file():
            from minipost import peft

            peft.load_adapter(model, out)
        else:
            tensors = checkpoint.load_tensors(out / "model.safetensors")
            if model.cfg.tie_embeddings:
                tensors["lm_head.weight"] = tensors["tok_emb.weight"]
            checkpoint.load_into(model, tensors, str(out / "model.safetensors"))
    return model.to(args.device), tok


def apply_peft_from_args(model, args, tokenizer=None) -> str:
    """Apply --peft (if any) and print the trainable share; returns the method name."""
    if args.peft != "none":
        from minipost import peft

        peft.apply_peft(model, args.peft, tokenizer=tokenizer, **peft_settings(args))
    n_train, n_total = count_trainable(model)
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


def count_trainable(model) -> tuple[int, int]:
    try:
        from minipost.peft import trainable_parameters

        return trainable_parameters(model)
    except ImportError:
        params = {id(p): p for p in model.parameters()}.values()
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_stage(model, tokenizer, args, optimizer=None, step: int | None = None, **info) -> None:
    """Write the stage's checkpoint into args.out (and the resume state if an optimizer is given).
    Under torchrun only rank 0 writes: the ranks hold identical weights."""
    if not distributed.is_main():
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"stage": args.stage, "seed": args.seed, "peft": args.peft,
              "base": pretrained.base_reference(args.init) if args.init is not None else None, **info}
    if args.peft != "none":
        from minipost import peft

        peft.save_adapter(model, out)
        checkpoint.write_json({"model": model.cfg.to_dict(), **config}, out / "config.json")
    else:
        checkpoint.save_model(model, out, **config)
    tokenizer.save(out)  # the run loads on its own: tokenizer.model, or tokenizer.json + template.json
    if optimizer is not None:
        checkpoint.save_train_state(out, optimizer, {"step": step})


def resume_step(args, optimizer) -> int:
    """With --resume, restore optimizer/RNG state from args.out and return the step reached."""
    if not args.resume:
        return 0
    out = Path(args.out)
    if not (out / "state.json").is_file():
        raise SystemExit(f"train.py: error: --resume but {out} has no state.json (nothing to resume)")
    counters = checkpoint.load_train_state(out, optimizer)
    print(f"[{args.stage}] resuming from step {counters['step']}", file=sys.stderr)
    return int(counters["step"])


def loop_config(args, warmup_default: int = 0, schedule: str = "rewarm") -> LoopConfig:
    return LoopConfig(steps=args.steps, lr=args.lr, grad_accum=args.grad_accum,
                      warmup=args.warmup if args.warmup is not None else warmup_default,
                      schedule=getattr(args, "schedule", schedule), log_every=args.log_every,
                      eval_every=args.eval_every, save_every=args.save_every, interrupt_at=args.interrupt_at)


def metrics_log(args) -> MetricsLog:
    return MetricsLog(Path(args.out) / "metrics.jsonl", resume=args.resume)


def finish(args, metrics: dict, started: float) -> dict:
    """Write eval.json (held-out numbers plus wall time) and print it.

    Under torchrun every rank evaluated the same weights; rank 0 writes, and the others wait
    for it, so no rank goes on (to a next stage that reads args.out) before the files exist.
    """
    metrics = {**metrics, "wall_time_s": round(time.time() - started, 1)}
    if getattr(args, "trainable_params", None) is not None:
        metrics.update(trainable_params=args.trainable_params, total_params=args.total_params)
    if distributed.is_main():
        checkpoint.write_json(metrics, Path(args.out) / "eval.json")
        print(f"[{args.stage}] eval: " + json.dumps(metrics))
    distributed.barrier()
    return metrics
