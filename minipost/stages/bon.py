"""Best-of-n against a reward model, scored by the gold judge (`--stage bon`).

Stiennon et al. 2020 and Gao et al. 2023 ("Scaling laws for reward model overoptimization")
use best-of-n as the simplest optimiser of a proxy reward: draw n replies from the policy,
keep the one the reward model scores highest. For each n in 1, 2, 4, ..., --max-n:

    proxy(n) = mean over prompts of r_norm(x, y*_n),  y*_n = argmax_{j < n} r_norm(x, y_j)
    gold(n)  = mean over prompts of gold_score(y*_n)     (rewards.py, never optimised)
    kl(n)    = log n - (n - 1) / n                        (best_of_n.bon_kl, analytic)

r_norm is the RM's standardised score (rm_reward.py, as RL with --reward-model trains on).
The replies: --max-n samples per held-out prompt (at most --max-eval prompts), drawn ONCE
at --temperature in one batched generate call per prompt; the best of n is taken among the
first n of them (best_of_n.bon_curve: nested subsets, so the proxy curve never falls).
The prompts: the built-in pref_val (their meta.fact is what the gold judge checks), or
--val-file, an RL prompt file whose records carry meta.fact.

Writes eval.json {"curve": [{"n", "kl", "sqrt_kl", "proxy", "gold"}], ...}, samples.jsonl
(every reply with its proxy and gold score, to read what the RM prefers), metrics.jsonl
(one line per n, for curves.png) and prints the table.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from minipost import checkpoint
from minipost.best_of_n import bon_curve, powers_of_two
from minipost.rollout import rollout, sampling_generator
from minipost.stages import common, rl_prompts


def add_args(p, stage):
    p.set_defaults(max_eval=32, batch_size=64)
    g = p.add_argument_group("bon (best-of-n against a reward model)")
    g.add_argument("--reward-model", type=Path, default=Path("out/rm"), help="the --stage rm run that picks the best")
    g.add_argument("--max-n", type=int, default=64, help="samples per prompt; n runs over 1, 2, 4, ... up to it")
    g.add_argument("--val-file", type=Path, default=None,
                   help="prompts JSONL whose records carry meta.fact (default: the built-in pref_val prompts)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="reply length limit")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the policy")


def gold_prompts(args) -> list[dict]:
    """The held-out prompts (capped at --max-eval); each must carry meta.fact for the gold judge."""
    from minipost import data as datasets

    if args.val_file is None:
        records = rl_prompts.preference_prompts(datasets.builtin("pref_val"))
    else:
        records = datasets.read_rl(args.val_file)
    records = records[: args.max_eval]
    lacking = [i + 1 for i, r in enumerate(records)
               if not (isinstance(r.get("meta"), dict) and isinstance(r["meta"].get("fact"), str))]
    if lacking:
        raise SystemExit(f"train.py: error: {args.val_file}: records {lacking[:5]} carry no meta.fact; best-of-n "
                         "scores the chosen reply with the gold judge, which needs the fact")
    return records


def table(curve: list[dict]) -> str:
    lines = [f"  {'n':>4}  {'kl':>7}  {'sqrt_kl':>7}  {'proxy':>8}  {'gold':>6}"]
    lines += [f"  {c['n']:>4}  {c['kl']:>7.4f}  {c['sqrt_kl']:>7.4f}  {c['proxy']:>8.4f}  {c['gold']:>6.4f}" for c in curve]
    return "\n".join(lines)


def run(args):
    started = time.time()
    if args.init is None:
        raise SystemExit("train.py: error: --stage bon needs --init (the policy to sample from)")
    common.seed_everything(args.seed)
    model, tok, _ = common.load_stage_model(args.init, args.device)
    model.eval().requires_grad_(False)
    prompts = gold_prompts(args)
    rl_prompts.check_prompts_fit([], prompts, tok, model.cfg, args)
    args.reward_fn = args.reward_weights = None  # the RM is the reward (common.rl_reward)
    reward = common.rl_reward(args)

    proxy, gold, samples = [], [], []
    for p, record in enumerate(prompts):  # one prompt's max-n samples per generate call
        ro = rollout(model, tok, [record], args.max_n, args.max_new_tokens, temperature=args.temperature,
                     generator=sampling_generator(args.seed, p, args.device), reward=reward)
        proxy.append(ro.rewards.cpu())
        gold.append(ro.gold.cpu())
        samples += [{"prompt": p, "sample": j, "proxy": ro.rewards[j].item(), "gold": ro.gold[j].item(),
                     "reply": ro.texts[j]} for j in range(args.max_n)]
        print(f"[bon] prompt {p + 1}/{len(prompts)}", file=sys.stderr, end="\r")
    ns = powers_of_two(args.max_n)
    curve = [{**c, "sqrt_kl": math.sqrt(c["kl"])} for c in bon_curve(torch.stack(proxy), torch.stack(gold), ns)]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json({"stage": "bon", "seed": args.seed, "base": str(args.init),
                           "reward_model": str(args.reward_model)}, out / "config.json")
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": c["n"], **{k: c[k] for k in ("kl", "proxy", "gold")}})
                                               + "\n" for c in curve))
    print(table(curve))
    return common.finish(args, {"curve": curve, "prompts": len(prompts), "max_n": args.max_n,
                                "reward_model": str(args.reward_model)}, started)
