"""Merge fine-tuned runs into one model (`--stage merge`), no training.

    python train.py --stage merge --init A --with B [--with C ...] --method linear|task-arithmetic|ties
                    [--weights wA wB ...] [--base BASE] [--density 0.2] [--scale 1.0] --out DIR

The equations are in minipost/merging.py:
  linear           theta = sum_i w_i theta_i over A, B, ... (weights sum to 1; default equal).
                   With --base, the base joins with weight 1 - sum_i w_i: WiSE-FT is
                   `--init FT --base BASE --weights alpha` (Wortsman et al. 2022).
  task-arithmetic  theta = theta_base + scale * sum_i w_i (theta_i - theta_base)  (Ilharco et al. 2023)
  ties             trim to --density, elect the sign, disjoint mean, times --scale  (Yadav et al. 2023)
task-arithmetic and ties need --base: the model the others were fine-tuned from.

Every run is loaded with stages.common.load_stage_model, so a LoRA run enters with its
adapter folded into the weights. The runs must share the architecture and the tokenizer
(the same tokenizer.model): a merge of models with different vocabularies is meaningless.
The output is an ordinary full checkpoint (model.safetensors, config.json recording the
inputs, tokenizer.model), usable as --init of any stage. eval.json: the number of models
merged and how far the result moved from --init (L2 norm of the difference).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from minipost import checkpoint, merging
from minipost.stages import common


def add_args(p, stage):
    p.add_argument("--with", dest="merge_with", type=Path, action="append", default=[],
                   help="another run to merge with --init (repeatable)")
    p.add_argument("--method", default="linear", choices=merging.METHODS,
                   help="linear (weighted mean; WiSE-FT with --base), task-arithmetic, or ties")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per merged run, --init first (default: linear 1/N each, otherwise 1 each)")
    p.add_argument("--base", type=Path, default=None,
                   help="the model the runs were fine-tuned from (task-arithmetic, ties; linear: WiSE-FT)")
    p.add_argument("--density", type=float, default=0.2, help="ties: share of each task vector's entries kept")
    p.add_argument("--scale", type=float, default=1.0, help="task-arithmetic, ties: lambda, the task vector scale")


def merge_states(method: str, states: list[dict], weights: list[float] | None, base: dict | None,
                 density: float, scale: float, names: list[str]) -> dict:
    """Dispatch to merging.py. states: the runs' state dicts, in the order of names."""
    if method == "linear":
        if base is None:
            weights = weights if weights is not None else [1.0 / len(states)] * len(states)
            return merging.linear_merge(states, weights, names)
        weights = weights if weights is not None else [1.0 / (len(states) + 1)] * len(states)
        return merging.linear_merge([base, *states], [1.0 - sum(weights), *weights], ["--base", *names])
    if base is None:
        raise ValueError(f"--method {method} needs --base (the model the runs were fine-tuned from)")
    if method == "task-arithmetic":
        return merging.task_arithmetic(base, states, weights, scale, names)
    return merging.ties_merge(base, states, weights, density, scale, names)


def _same_tokenizer(dirs: list[Path]) -> None:
    tokenizer = lambda run: (checkpoint.checkpoint_dir(run) / "tokenizer.model").read_bytes()  # noqa: E731
    first = tokenizer(dirs[0])
    for d in dirs[1:]:
        if tokenizer(d) != first:
            raise SystemExit(f"[merge] {d} has a different tokenizer.model from {dirs[0]}: "
                             "only runs of the same base model can be merged")


def run(args):
    started = time.time()
    if args.init is None or (not args.merge_with and args.base is None):
        raise SystemExit("train.py: error: --stage merge needs --init RUN and at least one --with RUN "
                         "(or --base BASE for WiSE-FT)")
    if args.peft != "none":
        raise SystemExit("train.py: error: --stage merge writes full weights; drop --peft")
    runs = [Path(args.init), *args.merge_with]
    n_models = len(runs)
    if args.weights is not None and len(args.weights) != n_models:
        raise SystemExit(f"train.py: error: --weights has {len(args.weights)} values for {n_models} runs "
                         f"(--init and each --with, in that order)")
    dirs = runs + ([Path(args.base)] if args.base is not None else [])
    _same_tokenizer(dirs)

    loaded = [common.load_stage_model(d) for d in dirs]  # -> (model, tokenizer, info); LoRA folded in
    model, tok, _ = loaded[0]
    configs = {str(d): m.cfg.to_dict() for d, (m, _, _) in zip(dirs, loaded)}
    if any(c != configs[str(dirs[0])] for c in configs.values()):
        raise SystemExit(f"[merge] the runs' model configs differ: {configs}")
    states = [checkpoint.model_tensors(m) for m, _, _ in loaded]
    base = states[n_models] if args.base is not None else None
    try:
        merged = merge_states(args.method, states[:n_models], args.weights, base, args.density, args.scale,
                              [str(r) for r in runs])
    except ValueError as e:
        raise SystemExit(f"[merge] {e}") from e

    distance = math.sqrt(sum(float((merged[k].double() - states[0][k].double()).pow(2).sum()) for k in merged))
    if model.cfg.tie_embeddings:
        merged["lm_head.weight"] = merged["tok_emb.weight"]
    checkpoint.load_into(model, merged, "merged weights")
    print(f"[merge] {args.method} of {n_models} runs"
          f"{f' on base {args.base}' if args.base else ''}: moved {distance:.4g} (L2) from {args.init}",
          file=sys.stderr)

    inputs = {"method": args.method, "runs": [str(r) for r in runs], "weights": args.weights,
              "merge_base": str(args.base) if args.base is not None else None,
              "density": args.density, "scale": args.scale}
    common.save_stage(model, tok, args, merge=inputs)
    return common.finish(args, {"models_merged": n_models, "distance_from_init": distance}, started)
