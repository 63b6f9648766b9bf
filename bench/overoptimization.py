"""Reward-model overoptimization at CPU scale (Gao et al. 2023, "Scaling Laws for Reward
Model Overoptimization", figure 1): proxy and gold reward against sqrt(KL from the SFT
policy), for best-of-n and for RL against the RM, for reward models trained on few and on
many preference pairs.

    proxy  the RM's standardised score (rm_reward.py: (r - held-out mean) / held-out std)
    gold   rewards.gold_score: 0.5 fact stated + 0.3 shop voice + 0.2 ended properly
    KL     best-of-n: the analytic log n - (n - 1) / n (best_of_n.bon_kl);
           RL: the logged `kl` of each rollout, sum_t log pi/pi_ref per completion, mean
           over the batch (a sample estimate of KL(pi || pi_sft) in nats)

What it runs, all through train.py's stages (so every number is one a user can reproduce):
  1. one reward model per --pairs count: `--stage rm --max-pairs N` from --sft (or an
     existing run, --rm N=DIR)
  2. best-of-n: `--stage bon` with the first RM (--bon-prompts held-out prompts, --max-n
     samples each, drawn once), then the SAME samples re-scored by the other RMs
  3. RL: `--stage RL_STAGE --reward-model RM` for each RM; the points are the rollouts'
     (kl, reward_mean, gold_mean), averaged over windows of --window steps
Writes OUT/overoptimization.png, OUT/overoptimization.md (the tables and, per curve, the
KL where gold peaks, gold at the peak and at the end) and OUT/overoptimization.json.

    python bench/overoptimization.py --sft out/sft [--rm 2000=out/rm] [--out out/overopt]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minipost import cli  # noqa: E402
from minipost.best_of_n import bon_curve, powers_of_two  # noqa: E402
from minipost.rm_reward import RewardModelScorer  # noqa: E402


def stage(argv: list[str]) -> dict:
    print("+ python train.py " + " ".join(argv), file=sys.stderr)
    return cli.run(argv)


def reward_models(args) -> dict[int, Path]:
    """{pairs: RM run}: the --rm runs given, the others trained here with --max-pairs."""
    given = {int(k): Path(v) for k, v in (spec.split("=", 1) for spec in args.rm)}
    runs = {}
    for n in args.pairs:
        runs[n] = given.get(n) or args.out / f"rm_{n}"
        if n not in given:
            stage(["--stage", "rm", "--init", str(args.sft), "--out", str(runs[n]), "--max-pairs", str(n),
                   "--steps", str(args.rm_steps), "--seed", str(args.seed), "--overwrite"])
    return runs


def best_of_n_curves(args, rms: dict[int, Path]) -> dict[int, list[dict]]:
    """Each RM's best-of-n curve over the same samples (drawn once, by the first RM's bon run)."""
    first = min(rms)
    bon_out = args.out / "bon"
    ev = stage(["--stage", "bon", "--init", str(args.sft), "--reward-model", str(rms[first]), "--out", str(bon_out),
                "--max-n", str(args.max_n), "--max-eval", str(args.bon_prompts), "--seed", str(args.seed),
                "--overwrite"])
    curves = {first: ev["curve"]}
    samples = [json.loads(line) for line in (bon_out / "samples.jsonl").read_text().splitlines()]
    from minipost import data
    from minipost.stages.rl_prompts import preference_prompts

    prompts = preference_prompts(data.builtin("pref_val"))
    gold = torch.tensor([s["gold"] for s in samples]).view(-1, args.max_n)
    for n, run in rms.items():
        if n == first:
            continue
        scorer = RewardModelScorer(run)
        proxy = scorer.score([prompts[s["prompt"]]["prompt"] for s in samples], [s["reply"] for s in samples])
        curves[n] = bon_curve(proxy.view(-1, args.max_n), gold, powers_of_two(args.max_n))
    return curves


def rl_curve(args, n: int, rm: Path) -> list[dict]:
    """One RL run against rm -> its rollouts' (kl, proxy, gold) in windows of --window steps."""
    out = args.out / f"{args.rl_stage}_{n}"
    stage(["--stage", args.rl_stage, "--init", str(args.sft), "--reward-model", str(rm), "--out", str(out),
           "--steps", str(args.rl_steps), "--prompts-per-step", str(args.prompts_per_step),
           "--group-size", str(args.group_size), "--max-eval", str(args.bon_prompts), "--seed", str(args.seed),
           "--lr", str(args.rl_lr), "--overwrite", *args.rl_flag])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    points = []
    for i in range(0, len(steps), args.window):
        w = steps[i: i + args.window]
        mean = lambda k: sum(s[k] for s in w) / len(w)  # noqa: E731
        points.append({"step": w[-1]["step"], "kl": max(mean("kl"), 0.0), "proxy": mean("reward_mean"),
                       "gold": mean("gold_mean")})
    return points


def summary(points: list[dict]) -> dict:
    """Where gold peaks on a curve, and what proxy and gold are there and at the end."""
    peak = max(points, key=lambda p: p["gold"])
    return {"peak_kl": peak["kl"], "peak_sqrt_kl": math.sqrt(peak["kl"]), "gold_at_peak": peak["gold"],
            "proxy_at_peak": peak["proxy"], "end_kl": points[-1]["kl"], "gold_at_end": points[-1]["gold"],
            "proxy_at_end": points[-1]["proxy"], "gold_at_start": points[0]["gold"],
            "proxy_at_start": points[0]["proxy"]}


def markdown(bon: dict, rl: dict, args) -> str:
    lines = [f"Policy {args.sft}; proxy = the RM's standardised score, gold = rewards.gold_score.", ""]
    for name, curves, key in (("best-of-n", bon, "n"), (f"RL ({args.rl_stage})", rl, "step")):
        lines += [f"### {name}", "", f"| RM pairs | {key} | KL | sqrt KL | proxy | gold |", "|---|---|---|---|---|---|"]
        for n, pts in curves.items():
            lines += [f"| {n} | {p[key]} | {p['kl']:.3f} | {math.sqrt(p['kl']):.3f} | {p['proxy']:.3f} | {p['gold']:.3f} |"
                      for p in pts]
        lines += ["", "| RM pairs | KL at gold peak | gold: start / peak / end | proxy: start / end |", "|---|---|---|---|"]
        for n, pts in curves.items():
            s = summary(pts)
            lines.append(f"| {n} | {s['peak_kl']:.3f} | {s['gold_at_start']:.3f} / {s['gold_at_peak']:.3f} / "
                         f"{s['gold_at_end']:.3f} | {s['proxy_at_start']:.3f} / {s['proxy_at_end']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(bon: dict, rl: dict, path: Path, rl_stage: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (title, curves) in zip(axes, (("best-of-n", bon), (f"RL ({rl_stage}) against the RM", rl))):
        for i, (n, pts) in enumerate(curves.items()):
            x = [math.sqrt(p["kl"]) for p in pts]
            ax.plot(x, [p["proxy"] for p in pts], color=f"C{i}", linestyle="--", marker=".", label=f"proxy, RM {n} pairs")
            ax.plot(x, [p["gold"] for p in pts], color=f"C{i}", marker="o", label=f"gold, RM {n} pairs")
        ax.set_title(title)
        ax.set_xlabel("sqrt(KL from the SFT policy), sqrt(nats)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (proxy: RM std units; gold: 0..1)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sft", type=Path, default=Path("out/sft"), help="the SFT policy (and the RMs' init)")
    p.add_argument("--out", type=Path, default=Path("out/overoptimization"), help="where the runs and results go")
    p.add_argument("--pairs", type=int, nargs="+", default=[250, 2000], help="preference pairs of each RM")
    p.add_argument("--rm", nargs="*", default=[], metavar="PAIRS=DIR", help="reuse an RM run for a --pairs count")
    p.add_argument("--rm-steps", type=int, default=150, help="optimizer steps of each RM trained here")
    p.add_argument("--bon-prompts", type=int, default=16, help="held-out prompts for best-of-n and RL evals")
    p.add_argument("--max-n", type=int, default=32, help="largest n of best-of-n")
    p.add_argument("--rl-stage", default="grpo", choices=("grpo", "rloo", "ppo"), help="the RL stage")
    p.add_argument("--rl-steps", type=int, default=60, help="RL steps per RM")
    p.add_argument("--rl-lr", type=float, default=2e-4, help="RL learning rate")
    p.add_argument("--prompts-per-step", type=int, default=4, help="RL prompts per step")
    p.add_argument("--group-size", type=int, default=4, help="RL completions per prompt")
    p.add_argument("--window", type=int, default=5, help="RL steps averaged into one point")
    p.add_argument("--rl-flag", nargs="*", default=["--beta", "0.01"],
                   help="more flags for the RL stage (default: a weak KL penalty, to let the policy drift)")
    p.add_argument("--seed", type=int, default=1234, help="seed of every run")
    args = p.parse_args()
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    rms = reward_models(args)
    bon = best_of_n_curves(args, rms)
    rl = {n: rl_curve(args, n, rm) for n, rm in rms.items()}
    report = markdown(bon, rl, args)
    wall = time.time() - t0
    report += f"\nwall time {wall / 60:.1f} min\n"
    (args.out / "overoptimization.md").write_text(report)
    (args.out / "overoptimization.json").write_text(json.dumps(
        {"best_of_n": bon, "rl": rl, "summary": {"best_of_n": {n: summary(c) for n, c in bon.items()},
                                                 "rl": {n: summary(c) for n, c in rl.items()}},
         "wall_time_s": wall}, indent=1))
    plot(bon, rl, args.out / "overoptimization.png", args.rl_stage)
    print(report)
    print(f"wrote {args.out}/overoptimization.png, .md, .json")


if __name__ == "__main__":
    main()
