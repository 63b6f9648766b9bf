"""The run directory (--out): never destroy an input, never mix two runs.

    check_out_dir(out, init, stage, config, resume, overwrite)   before anything is loaded
    check_writable(out)                                          before training, not after it
    truncate_metrics(path, step)                                 on --resume

check_out_dir refuses, with the reason and the flag that overrides it:
- --out is the --init directory, inside it, around it, or the base of the --init run
  (training would overwrite its own input; no flag overrides this);
- --out holds a run of another stage or configuration (`--overwrite` replaces it);
- --resume of a run of another stage or configuration, or of nothing;
- a non-empty directory that does not look like a run (`--overwrite` does not empty it:
  only files minipost writes are ever deleted).
Re-running the same stage with the same configuration into its own --out replaces the run,
as before; every fresh start (no --resume) empties the run's files first.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from minipost import checkpoint

# Files and directories a run writes at its top level (checkpoint units aside; DPO's reference
# log-probs are computed once per run, not per step, so they stay beside the units).
RUN_FILES = ("metrics.jsonl", "eval.json", "curves.png", "ref_logps.safetensors", "samples.jsonl", checkpoint.POINTER,
             *checkpoint.LEGACY_FILES)


def _fail(msg: str):
    raise SystemExit(f"train.py: error: {msg}")


def _is_minipost_entry(p: Path) -> bool:
    return p.name in RUN_FILES or p.name.startswith(("step-", ".step-")) or (
        p.name.startswith(".") and p.name.endswith(".tmp"))


def run_info(run: str | Path) -> dict | None:
    """The config.json of the minipost run in `run` (its current checkpoint), or None if it
    holds none (a config.json without "stage", e.g. a Hugging Face model's, is not one)."""
    ckpt = checkpoint.current_checkpoint(run)
    if ckpt is None or not (ckpt / "config.json").is_file():
        return None
    info = checkpoint.read_json(ckpt / "config.json")
    return info if isinstance(info, dict) and "stage" in info else None


def looks_like_run(out: Path) -> bool:
    """Whether `out` holds something minipost wrote: a checkpoint pointer, a metrics log, an
    eval.json, or a config.json naming a stage."""
    if any((out / name).is_file() for name in (checkpoint.POINTER, "metrics.jsonl", "eval.json")):
        return True
    try:
        info = checkpoint.read_json(out / "config.json") if (out / "config.json").is_file() else None
    except checkpoint.CheckpointError:
        return False
    return isinstance(info, dict) and "stage" in info


def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _nested(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _base_chain(init: Path, limit: int = 32) -> list[Path]:
    """init and the runs it builds on (config.json "base"), nearest first."""
    chain, run = [], init
    while run is not None and len(chain) < limit:
        chain.append(Path(run))
        try:
            info = run_info(run)
        except checkpoint.CheckpointError:
            break
        run = info.get("base") if info else None
    return chain


def _differences(stored: dict, config: dict) -> list[str]:
    """Keys of `config` whose value the stored run has otherwise (keys it lacks are skipped:
    runs of earlier versions recorded less)."""
    out = []
    for key, want in config.items():
        if key not in stored:
            continue
        have = stored[key]
        if key == "base":
            same = (have is None and want is None) or _same_path(have, want)
        else:
            same = have == want
        if not same:
            out.append(f"{key}: the run has {have!r}, this command {want!r}")
    return out


def check_out_dir(out, init, stage: str, config: dict, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that would destroy an input or mix runs; with --overwrite, empty a
    previous run first. config: what defines the run, compared with its config.json, e.g.
    {"peft": args.peft, "base": str(args.init)} ("base" compared as resolved paths)."""
    out = Path(out)
    if init is not None:  # checked on the paths even before a missing --init is built
        for run in _base_chain(Path(init)) if Path(init).exists() else [Path(init)]:
            if _nested(out, run):
                what = "the --init directory" if _same_path(run, init) else f"{run}, the base the --init run builds on"
                _fail(f"--out {out} is (or contains, or lies inside) {what}; training would overwrite its own "
                      f"input. Choose another --out")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if resume:
            _fail(f"--resume: {out} holds no run (nothing to resume); drop --resume to start one")
        return
    if not out.is_dir():
        _fail(f"--out {out} is a file, not a directory")
    if not looks_like_run(out):
        _fail(f"--out {out} is not empty and does not look like a minipost run (no checkpoint.json, "
              f"metrics.jsonl, eval.json or config.json with a stage); refusing to write into it. "
              f"Choose a new or empty directory")
    broken = None
    try:
        info = run_info(out)
    except checkpoint.CheckpointError as e:
        if resume:
            _fail(f"--resume: {e}")
        info, broken = None, str(e)  # replaced below only with --overwrite
    if resume:
        if info is None:
            _fail(f"--resume: {out} holds no complete checkpoint to resume")
        diff = _differences(info, {"stage": stage, **config})
        if diff:
            _fail(f"--resume: {out} holds another run ({'; '.join(diff)}); resume it with its own flags, "
                  f"or start a new run with another --out")
        return
    if info is None:  # only a broken checkpoint is worth a refusal; metrics alone are not
        diff = [broken] if broken else []
    else:
        diff = _differences(info, {"stage": stage, **config})
    if diff and not overwrite:
        _fail(f"--out {out} holds another run ({'; '.join(diff)}); pass --overwrite to replace it, "
              f"--resume to continue it, or choose another --out")
    # A fresh start replaces the run whole, so its old checkpoint, metrics and eval.json cannot
    # be mistaken for the new run's if this one stops early.
    empty_run(out)


def empty_run(out: str | Path) -> list[str]:
    """Delete what minipost wrote in `out` (checkpoints, metrics, eval.json) -> the names
    deleted. Other files are left where they are."""
    removed = []
    for p in Path(out).iterdir():
        if _is_minipost_entry(p):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p.name)
    return sorted(removed)


def check_writable(out: str | Path) -> None:
    """Create --out if needed and write (and delete) a probe file there, so a read-only or
    full --out fails now with its reason, not when the first checkpoint is saved."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.", suffix=".tmp")
        try:
            os.write(fd, b"minipost")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        _fail(f"--out {out} is not writable ({e.strerror or e}); choose a directory you can write to")


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep only the records of metrics.jsonl with step <= `step` (the step a run resumes
    from), so replayed steps are not logged twice; a torn last line (a kill mid-write) and
    any line that is not a JSON object are dropped. Rewritten atomically -> records kept."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) and record["step"] <= step:
            kept.append(line)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{x}\n" for x in kept)))
    return len(kept)
