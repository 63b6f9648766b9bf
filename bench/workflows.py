"""Three workflow lessons of continual pretraining and fine-tuning, measured on the built-in data.

From one pretrained base (--base, out/pretrain by default; built with the default pretrain
if missing), the script runs `train.py` stages in this process (cli.run, as `--stage all`
does) and prints three markdown tables of held-out numbers, also written under --out with a
PNG and the raw numbers (results.json). In the order they are run (tables 1 and 2 reuse
table 3's re-warm 1x run):

 3. CPT learning-rate rules (Ibrahim et al. 2024), equal steps, no replay, LR peaks in units
    of P, the pretraining peak (the pretrain stage's --lr, whose cosine ended at 0.1 P):
      no re-warm      --schedule continue --lr P: constant 0.1 P, the LR pretraining ended at
      re-warm k x P   --schedule rewarm --lr kP, k = 0.5, 1, 2: warmup, cosine to 0.1 kP
      infinite        --schedule infinite --lr P: warmup, constant P, linear cooldown over
                      the last 20% (the base was pretrained with cosine, not with this schedule)
 2. Forgetting vs merge weight (WiSE-FT, Wortsman et al. 2022): the re-warm 1x CPT run of
    table 3 merged with its base, theta = (1 - alpha) theta_base + alpha theta_cpt
    (`--stage merge --method linear --base BASE --weights alpha`), for each alpha; and the same
    CPT with --replay 0.05 for comparison. PNG: both losses against alpha, and the trade-off.
 1. Sequential CPT -> SFT vs joint CPT + SFT at equal trained tokens (Ke et al. 2025, FinDAP):
    sequential = the re-warm 1x CPT run (T_cpt = steps x batch x seq_len trained tokens),
    then SFT for --sft-steps (T_sft trained reply tokens, counted from its exact batches);
    joint = one SFT run from the base with --cpt-mix F, F = T_cpt / (T_cpt + T_sft), for the
    fewest steps whose trained tokens reach T_cpt + T_sft (counted the same way).
Losses: mean next-token loss on 64 held-out rows of 256 tokens of the new-domain text
(Verdant, cpt_val: "domain") and of the general text (Minimart, pretrain_val: "general"),
as --stage cpt measures them. fact_accuracy and format_rate: --stage sft's greedy-reply
judges on --max-eval held-out conversations. The defaults are sized for a shared 2-core
machine (docs/workflows.md: 36 min there, about 9 min of CPU); larger --cpt-steps / --sft-steps give
the same comparisons further from the start.

    python bench/workflows.py [--base out/pretrain] [--out out/bench_workflows]
                              [--cpt-steps 40] [--cpt-batch-size 8] [--sft-steps 120] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from minipost import checkpoint, cli  # noqa: E402
from minipost import data as datasets  # noqa: E402
from minipost.mixture import joint_cpt_sft  # noqa: E402
from minipost.packing import IGNORE_INDEX, epoch_order  # noqa: E402
from minipost.stages.common import load_stage_model  # noqa: E402
from minipost.stages.pretrain import rows_loss, token_rows  # noqa: E402
from minipost.stages.sft import make_rows, tokenize  # noqa: E402
from minipost.training import lr_at  # noqa: E402

SEQ_LEN, EVAL_ROWS, SFT_BATCH = 256, 64, 16  # the cpt and sft stages' defaults
LR_RULES = (  # (name, schedule, peak LR in units of the pretraining peak P)
    ("no re-warm (constant 0.1 P)", "continue", 1.0),
    ("re-warm to 0.5 P", "rewarm", 0.5),
    ("re-warm to 1 P", "rewarm", 1.0),
    ("re-warm to 2 P", "rewarm", 2.0),
    ("infinite (P, cooldown 20%)", "infinite", 1.0),
)


class Runner:
    """Runs stages (cli.run) under --out/runs, and measures held-out losses of any run."""

    def __init__(self, out: Path, seed: int):
        self.runs, self.seed, self.walls = out / "runs", seed, {}
        self._val = {}

    def stage(self, name: str, argv: list[str]) -> tuple[Path, dict]:
        out = self.runs / name
        argv = [*argv, "--out", str(out), "--seed", str(self.seed), "--log-every", "20"]
        print(f"[workflows] {name}: python train.py {' '.join(argv)}", file=sys.stderr)
        started = time.time()
        metrics = cli.run(argv)
        self.walls[name] = time.time() - started
        return out, metrics

    def losses(self, run: Path) -> dict:
        """{"domain", "general"}: held-out next-token losses of the run's model."""
        model, tok, _ = load_stage_model(run)
        for which, name in (("domain", "cpt_val"), ("general", "pretrain_val")):
            if which not in self._val:  # every run shares the base's tokenizer
                self._val[which] = token_rows(datasets.read_texts(datasets.builtin(name)), tok, SEQ_LEN)[:EVAL_ROWS]
        return {w: rows_loss(model, self._val[w]) for w in ("domain", "general")}


def sft_trained_rows(init: Path, seed: int, cpt_mix: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The trained tokens of each packed row `--stage sft --init INIT` (default flags,
    --cpt-mix) trains on, built as the stage builds them. Returns (counts [rows], mix stats)."""
    _, tok, _ = load_stage_model(init)
    docs = tokenize(datasets.read_sft(datasets.builtin("sft_train")), tok, "prompt", SEQ_LEN, "train")
    stats = {}
    if cpt_mix > 0:
        texts = datasets.read_texts(datasets.builtin("cpt_train"))
        docs, stats = joint_cpt_sft(docs, texts, tok, cpt_mix, SEQ_LEN, seed)
    return (make_rows(docs, tok, SEQ_LEN, "on")["targets"] != IGNORE_INDEX).sum(1), stats


def tokens_per_step(per_row: torch.Tensor, seed: int):
    """Yield the trained tokens of step 0, 1, ... in the stage's batch order (packing.batches:
    step k takes batch k % per_epoch of epoch k // per_epoch, grad-accum 1)."""
    per_epoch = -(-len(per_row) // SFT_BATCH)
    for epoch in itertools.count():
        order = torch.tensor(epoch_order(len(per_row), seed, epoch))
        for b in range(per_epoch):
            yield int(per_row[order[b * SFT_BATCH:(b + 1) * SFT_BATCH]].sum())


def markdown(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def cpt_flags(steps: int, batch_size: int) -> tuple[list[str], int]:
    """The flags every CPT run shares (each adds its LR rule and replay), and its warmup:
    a tenth of the steps, the cpt stage's default share (30 of 300)."""
    warmup = max(1, steps // 10)
    return ["--stage", "cpt", "--steps", str(steps), "--batch-size", str(batch_size), "--warmup", str(warmup)], warmup


def lr_table(r: Runner, base: Path, P: float, steps: int, batch_size: int) -> tuple[str, dict]:
    cpt, warmup = cpt_flags(steps, batch_size)
    results = {}
    for name, schedule, k in LR_RULES:
        run, ev = r.stage(f"cpt_{schedule}_{k:g}P", [*cpt, "--init", str(base), "--replay", "0",
                                                    "--schedule", schedule, "--lr", f"{k * P:g}"])
        lrs = [lr_at(s, steps, k * P, warmup, schedule) for s in range(steps)]  # what the run used
        results[name] = {"run": str(run), "schedule": schedule, "lr_flag": k * P, "lr_max": max(lrs),
                         "lr_last": lrs[-1], **ev}
    rows = [[n, f"{v['schedule']} --lr {v['lr_flag']:g}",
             f"{v['lr_max']:.2g} / {v['lr_last']:.2g}", v["domain_val_loss"], v["general_val_loss"],
             v["general_val_loss"] - v["general_val_loss_before"]] for n, v in results.items()]
    before = next(iter(results.values()))
    title = (f"CPT learning-rate rules: `{' '.join(cpt)}`, no replay, "
             f"P = {P:g}; base: domain {before['domain_val_loss_before']:.3f}, "
             f"general {before['general_val_loss_before']:.3f}")
    return title + "\n\n" + markdown(["rule", "--schedule, --lr", "LR max / last", "domain loss", "general loss",
                                      "general increase"], rows), results


def merge_table(r: Runner, base: Path, cpt_run: Path, P: float, steps: int, batch_size: int,
                alphas: list[float], replay: float) -> tuple[str, dict]:
    cpt, _ = cpt_flags(steps, batch_size)
    base_losses = r.losses(base)
    curve = []
    for a in alphas:
        run, _ = r.stage(f"merge_{a:g}", ["--stage", "merge", "--method", "linear", "--init", str(cpt_run),
                                          "--base", str(base), "--weights", f"{a:g}"])
        curve.append({"alpha": a, **r.losses(run)})
    run, ev = r.stage(f"cpt_replay_{replay:g}", [*cpt, "--init", str(base), "--replay", f"{replay:g}",
                                                 "--schedule", "rewarm", "--lr", f"{P:g}"])
    replayed = {"domain": ev["domain_val_loss"], "general": ev["general_val_loss"]}
    rows = [[f"merge alpha = {c['alpha']:g}", c["domain"], c["general"], c["general"] - base_losses["general"]]
            for c in curve]
    rows.append([f"CPT with {replay:g} replay (no merge)", replayed["domain"], replayed["general"],
                 replayed["general"] - base_losses["general"]])
    title = "Forgetting vs merge weight: (1 - alpha) base + alpha CPT (re-warm to 1 P, no replay)"
    return (title + "\n\n" + markdown(["model", "domain loss", "general loss", "general increase"], rows),
            {"base": base_losses, "curve": curve, "replay": {"fraction": replay, **replayed}})


def plot_merge(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2, not 5 x 10^-1 on the log axes

    curve, rep = results["curve"], results["replay"]
    alphas = [c["alpha"] for c in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, colour in (("domain", "tab:green"), ("general", "tab:blue")):
        left.plot(alphas, [c[key] for c in curve], "o-", color=colour, label=f"{key} loss, merged")
        left.axhline(rep[key], color=colour, ls="--", label=f"{key} loss, {rep['fraction']:g} replay")
    left.set(xlabel="alpha (weight of the CPT model)", ylabel="held-out loss", yscale="log",
             title="Losses against the merge weight")
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.legend(fontsize=8)
    right.plot([c["domain"] for c in curve], [c["general"] for c in curve], "o-", color="tab:purple",
               label="merge (1 - alpha) base + alpha CPT")
    for c in curve:
        right.annotate(f"{c['alpha']:g}", (c["domain"], c["general"]), textcoords="offset points", xytext=(4, 4))
    right.plot([rep["domain"]], [rep["general"]], "*", ms=14, color="tab:red", label=f"CPT, {rep['fraction']:g} replay")
    right.set(xlabel="domain loss (Verdant)", ylabel="general loss (Minimart)", xscale="log",
              title="Trade-off (lower left is better)")
    right.xaxis.set_major_formatter(plain)
    right.xaxis.set_minor_formatter(plain)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def joint_table(r: Runner, base: Path, cpt: Path, cpt_steps: int, cpt_batch: int, sft_steps: int,
                max_eval: int) -> tuple[str, dict]:
    sft_common = ["--stage", "sft", "--max-eval", str(max_eval)]
    t_cpt = cpt_steps * cpt_batch * SEQ_LEN  # every position of a CPT row is trained
    t_sft = sum(itertools.islice(tokens_per_step(sft_trained_rows(cpt, r.seed)[0], r.seed), sft_steps))
    mix = t_cpt / (t_cpt + t_sft)
    per_row, stats = sft_trained_rows(base, r.seed, mix)
    total, joint_steps = 0, 0
    for count in tokens_per_step(per_row, r.seed):  # the fewest steps reaching T_cpt + T_sft
        if total >= t_cpt + t_sft:
            break
        total, joint_steps = total + count, joint_steps + 1
    seq_run, seq = r.stage("sequential_sft", [*sft_common, "--init", str(cpt), "--steps", str(sft_steps)])
    joint_run, joint = r.stage("joint_sft", [*sft_common, "--init", str(base), "--steps", str(joint_steps),
                                             "--cpt-mix", f"{mix:.6f}"])
    models = {
        "base": (base, 0, 0, joint, "_before"),
        f"CPT only ({cpt_steps} steps)": (cpt, t_cpt, cpt_steps, seq, "_before"),
        f"sequential: CPT, then SFT {sft_steps} steps": (seq_run, t_cpt + t_sft, cpt_steps + sft_steps, seq, ""),
        f"joint: SFT --cpt-mix {mix:.3f}, {joint_steps} steps": (joint_run, total, joint_steps, joint, ""),
    }
    rows, results = [], {"mix": mix, "mix_stats": stats, "t_cpt": t_cpt, "t_sft": t_sft}
    for name, (run, tokens, steps, ev, suffix) in models.items():
        got = {**r.losses(run), **{k: ev[k + suffix] for k in ("val_loss", "fact_accuracy", "format_rate")}}
        results[name] = {"run": str(run), "trained_tokens": tokens, "steps": steps, **got}
        rows.append([name, steps, tokens, got["domain"], got["general"], got["val_loss"], got["fact_accuracy"],
                     got["format_rate"]])
    title = (f"Sequential CPT -> SFT vs joint CPT + SFT at equal trained tokens (CPT {t_cpt:,} text tokens, "
             f"SFT {t_sft:,} reply tokens; the joint pool's text share {stats['text_fraction']:.3f})")
    return title + "\n\n" + markdown(["model", "steps", "trained tokens", "domain loss", "general loss",
                                      "SFT val_loss", "fact_accuracy", "format_rate"], rows), results


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", type=Path, default=Path("out/pretrain"),
                   help="pretrained base checkpoint (the default is built with the default pretrain if missing)")
    p.add_argument("--out", type=Path, default=Path("out/bench_workflows"), help="runs, tables.md, PNG, results.json")
    p.add_argument("--cpt-steps", type=int, default=40, help="steps of every CPT run (tables 1-3)")
    p.add_argument("--cpt-batch-size", type=int, default=8, help="rows of 256 tokens per CPT step")
    p.add_argument("--sft-steps", type=int, default=120, help="steps of the sequential SFT run (table 1)")
    p.add_argument("--max-eval", type=int, default=50, help="held-out conversations for fact_accuracy/format_rate")
    p.add_argument("--pretrain-lr", type=float, default=None,
                   help="P, the base's pretraining peak LR (None: the pretrain stage's default --lr)")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="merge weights of the CPT model (table 2)")
    p.add_argument("--replay", type=float, default=0.05, help="replay fraction of the comparison CPT run (table 2)")
    p.add_argument("--seed", type=int, default=1234, help="seed of every run")
    p.add_argument("--quick", action="store_true", help="smoke check: 10 CPT steps, 20 SFT steps, 10 eval replies")
    args = p.parse_args()
    if args.quick:
        args.cpt_steps, args.sft_steps, args.max_eval = 10, 20, 10
    for flag in ("cpt_steps", "cpt_batch_size", "sft_steps", "max_eval"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        args.alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        p.error(f"--alphas must be comma-separated numbers, got {args.alphas!r}")
    if not all(0.0 <= a <= 1.0 for a in args.alphas):
        p.error(f"--alphas must lie in [0, 1], got {args.alphas}")
    if not 0.0 < args.replay < 1.0:
        p.error(f"--replay must be in (0, 1), got {args.replay}")
    if args.pretrain_lr is None:
        args.pretrain_lr = cli.build_parser("pretrain").get_default("lr")
    if args.pretrain_lr <= 0:
        p.error(f"--pretrain-lr must be positive, got {args.pretrain_lr}")
    return args


def main():
    args = parse_args()
    started = time.time()
    if checkpoint.current_checkpoint(args.base) is None:  # a run of either checkpoint layout
        if args.base != Path("out/pretrain"):
            raise SystemExit(f"bench/workflows.py: error: --base {args.base} holds no checkpoint")
        print(f"[workflows] {args.base} is missing: building it with the default pretrain "
              f"(python train.py --stage pretrain --out {args.base})", file=sys.stderr)
        cli.run(["--stage", "pretrain", "--out", str(args.base), "--seed", str(args.seed)])
    args.out.mkdir(parents=True, exist_ok=True)
    r = Runner(args.out, args.seed)
    lr_text, lr_results = lr_table(r, args.base, args.pretrain_lr, args.cpt_steps, args.cpt_batch_size)
    cpt_run = Path(lr_results["re-warm to 1 P"]["run"])
    merge_text, merge_results = merge_table(r, args.base, cpt_run, args.pretrain_lr, args.cpt_steps,
                                            args.cpt_batch_size, args.alphas, args.replay)
    plot_merge(merge_results, args.out / "forgetting_vs_merge.png")
    joint_text, joint_results = joint_table(r, args.base, cpt_run, args.cpt_steps, args.cpt_batch_size,
                                            args.sft_steps, args.max_eval)
    wall = time.time() - started
    tables = "\n\n".join([f"1. {joint_text}", f"2. {merge_text}", f"3. {lr_text}"])
    stage_walls = ", ".join(f"{k} {v:.0f}" for k, v in r.walls.items())
    tables += f"\n\nTotal wall time {wall:.0f} s (stages, s: {stage_walls})"
    (args.out / "tables.md").write_text(tables + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall, "stage_wall_s": r.walls,
         "joint": joint_results, "merge": merge_results, "lr_rules": lr_results}, indent=2) + "\n")
    print("\n" + tables)
    print(f"\nwrote {args.out}/tables.md, forgetting_vs_merge.png, results.json")


if __name__ == "__main__":
    main()
