"""Training curves of a run: `write_curves(run_dir)` -> run_dir/curves.png from its metrics.jsonl.

One panel per logged quantity, against the step: loss and lr first, then the stage's own
numbers in the order the stage logs them (rewards/margins and rewards/accuracies for DPO,
reward_mean, kl and task_acc for GRPO/RLOO, val_loss where evaluated, ...). Timings
(keys ending in "_s") are left out: they say how fast, not what was learnt. A key logged at
some steps only (a held-out number every --eval-every steps) is drawn at those steps.

matplotlib is imported when a plot is drawn, with the Agg backend (files only, no display),
so importing this module costs nothing and needs no display.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

FIRST = ("loss", "lr")
MAX_PANELS = 12


def read_metrics(path) -> list[dict]:
    """metrics.jsonl -> its records; a line cut short by an interrupted write is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (steps, values)} for each numeric key logged at least twice, in panel order."""
    keys = [k for r in records for k in r if k != "step" and not k.endswith("_s")]
    keys = list(dict.fromkeys([k for k in FIRST if k in keys] + keys))
    out = {}
    for k in keys:
        points = [(r.get("step", i + 1), r[k]) for i, r in enumerate(records) if _number(r.get(k))]
        if len(points) >= 2:
            out[k] = ([float(s) for s, _ in points], [float(v) for _, v in points])
    return dict(list(out.items())[:MAX_PANELS])


def write_curves(run_dir, path=None) -> Path | None:
    """Draw run_dir/metrics.jsonl into `path` (default run_dir/curves.png) -> the PNG's path,
    or None when the run logged nothing that makes a curve (fewer than two points of any key)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    data = curves(read_metrics(metrics)) if metrics.is_file() else {}
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(data))
    rows = -(-len(data) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, data.items()):
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    fig.suptitle(run_dir.name or str(run_dir))
    fig.tight_layout()
    path = Path(path) if path is not None else run_dir / "curves.png"
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    tmp.replace(path)  # atomic, as every file a run writes
    return path
