"""Report cards.

`python -m minipost.report [--root out]` -> out/report.md over all stages: one table, stage
by stage, with the held-out numbers of every eval.json, the wall time and the trainable
parameters; below it the training curves (loss, reward) from each metrics.jsonl, as PNGs
when matplotlib is installed and as text sparklines otherwise.

`python -m minipost.report RUN [RUN ...] [--out DIR]` -> DIR/report.md for any set of runs
(directories with an eval.json), with DIR/<run>_curves.png (plots.write_curves) for each:
  - per run, every eval.json number; a number with a `*_before` counterpart (the starting
    model, measured by the stage) is shown as before -> after and its change in points;
  - each `*_by_intent` breakdown (e.g. fact_accuracy_by_intent: one accuracy per question
    type), before and after where the stage measured both;
  - a flag on every intent the stage moved DOWN by more than FLAG_POINTS (10) percentage
    points against its `*_before` numbers (intent_drops): a stage that raised the average
    while it forgot one kind of question shows here, not in the average.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from minipost import checkpoint

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


# ----------------------------------------------------------------------------- a set of runs

FLAG_POINTS = 10.0
_NOT_SHOWN = ("wall_time_s", "trainable_params", "total_params")


def _points(before: float, after: float) -> float:
    """after - before in percentage points, rounded to 1e-6 so that 0.8 -> 0.7 is exactly -10."""
    return round((after - before) * 100, 6)


def intent_drops(ev: dict, threshold: float = FLAG_POINTS) -> list[tuple[str, str, float, float, float]]:
    """[(breakdown key, intent, before, after, change in points)] for every intent of a
    `*_by_intent` breakdown whose `*_by_intent_before` value is more than `threshold` points
    higher (change < -threshold)."""
    out = []
    for key, after in ev.items():
        before = ev.get(f"{key}_before")
        if not key.endswith("_by_intent") or not isinstance(after, dict) or not isinstance(before, dict):
            continue
        for intent in sorted(set(after) & set(before)):
            a, b = after[intent], before[intent]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and _points(b, a) < -threshold:
                out.append((key, intent, b, a, _points(b, a)))
    return out


def _run_names(runs: list[Path]) -> list[str]:
    names = [r.resolve().name for r in runs]
    return [str(r).strip("/").replace("/", "_") for r in runs] if len(set(names)) < len(names) else names


def render_runs(runs, out_dir, plots: bool = True) -> str:
    """The report card of `runs` (run directories) as markdown; curves go to out_dir."""
    runs = [Path(r) for r in runs]
    lines = ["# minipost report card", ""]
    flagged = []
    sections = []
    for name, run in zip(_run_names(runs), runs):
        ev = json.loads((run / "eval.json").read_text())
        stage = ""
        ckpt = checkpoint.current_checkpoint(run) or run  # the current unit (or an earlier run's directory)
        if (ckpt / "config.json").is_file():
            stage = json.loads((ckpt / "config.json").read_text()).get("stage") or ""
        sec = [f"## {name}" + (f" ({stage})" if stage else ""), "", f"`{run}`", ""]
        sec += _numbers_table(ev)
        for key in sorted(k for k, v in ev.items() if k.endswith("_by_intent") and isinstance(v, dict)):
            sec += ["", f"### {key}", ""] + _intent_table(ev, key)
        drops = intent_drops(ev)
        flagged += [(name, *d) for d in drops]
        png = None
        if plots:
            from minipost.plots import write_curves

            png = write_curves(run, Path(out_dir) / f"{name}_curves.png")
        if png is not None:
            sec += ["", f"![{name} training curves]({png.name})"]
        sections += sec + [""]
    if flagged:
        lines += [f"**Flagged: {len(flagged)} intent(s) down by more than {FLAG_POINTS:g} points.**", ""]
        lines += [f"- {name}: {key} `{intent}` {_fmt(b)} -> {_fmt(a)} ({p:+.1f} points)"
                  for name, key, intent, b, a, p in flagged] + [""]
    else:
        lines += [f"No intent moved down by more than {FLAG_POINTS:g} points.", ""]
    return "\n".join(lines + sections).rstrip("\n") + "\n"


def _numbers_table(ev: dict) -> list[str]:
    rows = ["| metric | before | after | change (points) |", "|---|---|---|---|"]
    for key in sorted(ev):
        value = ev[key]
        if key.endswith("_before") or isinstance(value, dict) or key in _NOT_SHOWN:
            continue
        before = ev.get(f"{key}_before")
        if isinstance(before, (int, float)) and isinstance(value, (int, float)):
            rows.append(f"| {key} | {_fmt(before)} | {_fmt(value)} | {_points(before, value):+.1f} |")
        else:
            rows.append(f"| {key} | | {_fmt(value)} | |")
    for key in _NOT_SHOWN:
        if key in ev:
            rows.append(f"| {key} | | {_fmt(ev[key])} | |")
    return rows


def _intent_table(ev: dict, key: str) -> list[str]:
    after, before = ev[key], ev.get(f"{key}_before")
    before = before if isinstance(before, dict) else {}
    rows = ["| intent | before | after | change (points) | |", "|---|---|---|---|---|"]
    for intent in sorted(set(after) | set(before)):
        a, b = after.get(intent), before.get(intent)
        change = _points(b, a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        flag = f"**down > {FLAG_POINTS:g} points**" if change is not None and change < -FLAG_POINTS else ""
        cells = [intent, "" if b is None else _fmt(b), "" if a is None else _fmt(a),
                 "" if change is None else f"{change:+.1f}", flag]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write_run_report(runs, out_dir, plots: bool = True) -> Path:
    """render_runs into out_dir/report.md (and the curves beside it) -> its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [str(r) for r in runs if not (Path(r) / "eval.json").is_file()]
    if missing:
        raise SystemExit(f"minipost.report: error: no eval.json in {', '.join(missing)} (not a finished run)")
    path = out_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_runs(runs, out_dir, plots))
    tmp.replace(path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a report card: over the stages in --root, or over the RUNs given")
    p.add_argument("runs", nargs="*", type=Path, help="run directories (each with an eval.json) to report on")
    p.add_argument("--root", default="out", help="without RUNs: directory holding one subdirectory per stage")
    p.add_argument("--out", type=Path, default=Path("out/report"),
                   help="with RUNs: directory for report.md and the curves (default out/report)")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (text sparklines in the --root report)")
    args = p.parse_args(argv)
    if args.runs:
        path = write_run_report(args.runs, args.out, plots=not args.no_plots)
    else:
        path = write_report(args.root, plots=not args.no_plots)
    print(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
