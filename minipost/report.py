"""The report card over all stages: `python -m minipost.report [--root out]` -> out/report.md.

One table, stage by stage, with the held-out numbers of every eval.json, the wall time
and the trainable parameters; below it the training curves (loss, reward) from each
metrics.jsonl, as PNGs when matplotlib is installed (`pip install .[plots]`) and as text
sparklines otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# The order of the adaptation workflow; any other stage directory follows, sorted.
STAGE_ORDER = ("pretrain", "cpt", "sft", "probe", "rm", "dpo", "grpo", "rloo", "ppo")
BARS = "▁▂▃▄▅▆▇█"
CURVE_KEYS = ("loss", "reward_mean")


def sparkline(values: list[float], width: int = 40) -> str:
    """values -> a string of block characters, one per bucket of consecutive values."""
    if not values:
        return ""
    step = max(1, -(-len(values) // width))
    buckets = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    lo, hi = min(buckets), max(buckets)
    if hi == lo:
        return BARS[0] * len(buckets)
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / (hi - lo) * len(BARS)))] for v in buckets)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def collect(root: Path) -> list[tuple[str, dict, list[dict]]]:
    """[(stage, eval.json contents, metrics.jsonl records)] for every stage directory with an eval.json."""
    found = {p.parent.name: p.parent for p in root.glob("*/eval.json")}
    order = [s for s in STAGE_ORDER if s in found] + sorted(set(found) - set(STAGE_ORDER))
    out = []
    for stage in order:
        d = found[stage]
        metrics = []
        if (d / "metrics.jsonl").is_file():
            metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out.append((stage, json.loads((d / "eval.json").read_text()), metrics))
    return out


def render(root: Path, plots: bool = True) -> str:
    stages = collect(root)
    lines = ["# minipost report card", "", f"Held-out numbers from `{root}/*/eval.json`.", ""]
    if not stages:
        return "\n".join(lines + ["No stage has an eval.json yet."]) + "\n"
    lines += ["| stage | held-out metrics | wall time (s) | trainable params |", "|---|---|---|---|"]
    for stage, ev, _ in stages:
        shown = {k: v for k, v in ev.items()  # breakdowns (dicts) stay in eval.json, out of the table
                 if k not in ("wall_time_s", "trainable_params", "total_params") and not isinstance(v, dict)}
        cells = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items()))
        params = ev.get("trainable_params")
        share = f"{_fmt(params)} ({100 * params / ev['total_params']:.2f}%)" if params and ev.get("total_params") else "-"
        lines.append(f"| {stage} | {cells} | {_fmt(ev.get('wall_time_s', '-'))} | {share} |")
    lines += ["", "## Training curves", ""]
    matplotlib = _matplotlib() if plots else None
    for stage, _, records in stages:
        for key in CURVE_KEYS:
            values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
            if len(values) < 2:
                continue
            if matplotlib is not None:
                png = f"{stage}_{key}.png"
                _plot(matplotlib, values, key, stage, root / png)
                lines.append(f"![{stage} {key}]({png})")
            else:
                lines.append(f"- {stage} {key}: `{sparkline(values)}` {values[0]:.4g} -> {values[-1]:.4g}")
    return "\n".join(lines) + "\n"


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _plot(plt, values, key, stage, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.plot(range(1, len(values) + 1), values)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{stage}: {key}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(root: str | Path = "out", plots: bool = True) -> Path:
    root = Path(root)
    path = root / "report.md"
    text = render(root, plots)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the report card over all stages")
    p.add_argument("--root", default="out", help="directory holding one subdirectory per stage")
    p.add_argument("--no-plots", action="store_true", help="text sparklines even if matplotlib is installed")
    args = p.parse_args(argv)
    path = write_report(args.root, plots=not args.no_plots)
    print(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
