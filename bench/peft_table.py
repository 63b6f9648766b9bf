"""PEFT methods at a glance, measured: SFT on the default model with each method.

For full fine-tuning, LoRA, QLoRA, prefix tuning, prompt tuning and bottleneck adapters,
runs `train.py --stage sft --peft METHOD` for the same number of steps from the same base
(out/pretrain, built first if missing), each in a fresh process, and prints a markdown
table: trainable parameters and their share, checkpoint size on disk, seconds per step,
peak memory (max RSS of the process) and the held-out fact_accuracy and format_rate.

    python bench/peft_table.py [--steps 150] [--methods none,lora,...] [--out out/bench_peft]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("none", "lora", "qlora", "prefix", "prompt", "adapter")
LR = {"none": 1e-3, "lora": 3e-3, "qlora": 3e-3, "prefix": 1e-2, "prompt": 3e-2, "adapter": 3e-3}


def child(argv: list[str]) -> None:
    """Run one stage in this process and print its peak memory as the last line."""
    sys.path.insert(0, str(ROOT))
    from minipost import cli

    cli.run(argv)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def seconds_per_step(metrics: Path) -> float:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    first, last = records[0], records[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / max(last["step"] - first["step"], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="out/bench_peft")
    p.add_argument("--init", default="out/pretrain")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    sys.path.insert(0, str(ROOT))
    from minipost import checkpoint

    rows = []
    for method in args.methods.split(","):
        out = Path(args.out) / method
        argv = ["--stage", "sft", "--init", args.init, "--out", str(out), "--peft", method,
                "--steps", str(args.steps), "--lr", str(LR[method]), "--log-every", "10"]
        print(f"[peft_table] {method}: python train.py {' '.join(argv)}", file=sys.stderr)
        proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
        peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
        ev = json.loads((out / "eval.json").read_text())
        weights = checkpoint.checkpoint_dir(out) / ("model.safetensors" if method == "none" else "adapter.safetensors")
        rows.append((method, ev, weights.stat().st_size, seconds_per_step(out / "metrics.jsonl"), peak))
    print(f"\nSFT, {args.steps} steps each, from {args.init}\n")
    print("| method | trainable params | % of total | checkpoint on disk | s/step | peak RSS (MB) "
          "| fact_accuracy | format_rate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, ev, size, sps, peak in rows:
        print(f"| {method} | {ev['trainable_params']:,} | {100 * ev['trainable_params'] / ev['total_params']:.2f}% "
              f"| {size / 1024:,.0f} KiB | {sps:.2f} | {peak:.0f} | {ev['fact_accuracy']:.2f} "
              f"| {ev['format_rate']:.2f} |")


if __name__ == "__main__":
    main()
