"""Checkpoints as safetensors + JSON. No pickle is ever loaded.

A saved step is one unit: every file of it (weights or adapter, heads, optimizer and RNG
state, config, tokenizer) is written into a new directory, and the unit becomes current by
one atomic operation, the replacement of a small pointer file:

    out/sft/
      checkpoint.json          {"current": "step-000020", "checkpoint_step": 20}
      step-000020/             the current unit (the layout of a checkpoint directory below)
      metrics.jsonl  eval.json

A kill at any instant leaves the pointer naming either the previous unit or the new one,
both complete, never a mix; a unit the pointer does not name (a kill between the rename and
the pointer) is ignored and removed by the next save, as are files of an older layout. Every
safetensors file carries the unit's step in its metadata and every JSON file a
"checkpoint_step" field; loading refuses a unit whose files disagree. Every stage saves
this way (stages/common.save_stage), the final save after the last step included.

Layout of a checkpoint directory (a unit, or a whole run directory written by an earlier
minipost, which still loads: `current_checkpoint` returns the directory itself). Readers
take it from `checkpoint_dir(run)`, which understands both layouts:
    model.safetensors   the weights (full fine-tuning / pretraining)
    adapter.safetensors only the trained PEFT tensors (see peft/__init__.py), + adapter.json
    value_head.safetensors  the reward model's or PPO critic's head (rm, ppo)
    config.json         {"model": GPTConfig fields, "stage": ..., "tokenizer": ..., ...}
    tokenizer.model     the tokenizer (a real model's: tokenizer.json, tokenizer_config.json,
                        template.json), kept as is: no step in it
    state.safetensors   optimizer moments and RNG state, for --resume
    state.json          step counters, data position, optimizer hyperparameters
    manifest.json       (units only) the step, every file's size, the files without a step
                        ("unstamped"), written last

Single files are written to a temporary name in the same directory and renamed into place
(os.replace is atomic on POSIX). Loading checks the config and every tensor's name and
shape, and names the mismatch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minipost.config import GPTConfig


class CheckpointError(RuntimeError):
    pass


def atomic_write(path: Path, write) -> None:
    """Write path through write(tmp_name) into a temporary file, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(obj, path: str | Path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(Path(path), write)


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Copy `tensors` into `module`'s parameters/buffers, checking names and shapes first."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if unexpected or (strict and missing):
        raise CheckpointError(
            f"{source}: tensor names do not match the model"
            + (f"; missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing and strict else "")
            + (f"; unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}" if unexpected else "")
        )
    for k, t in tensors.items():
        if own[k].shape != t.shape:
            raise CheckpointError(
                f"{source}: shape mismatch for {k}: checkpoint has {tuple(t.shape)}, model expects {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t)


def model_tensors(model) -> dict[str, torch.Tensor]:
    """The model's state dict, without the tied lm_head (it is the embedding matrix)."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_model(model, out_dir: str | Path, **info) -> None:
    """Write model.safetensors and config.json ({"model": cfg, **info}) into out_dir."""
    out_dir = Path(out_dir)
    save_tensors(model_tensors(model), out_dir / "model.safetensors")
    write_json({"model": model.cfg.to_dict(), **info}, out_dir / "config.json")


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """Build the GPT described by config.json and load its weights -> (model, config dict).
    ckpt_dir: a run directory (its current unit is read) or a checkpoint directory."""
    from minipost.model import GPT
    from minipost.validate import validate_config_dict

    ckpt_dir = current_checkpoint(ckpt_dir) or Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)
    info = read_json(ckpt_dir / "config.json")
    if "model" not in info:
        raise CheckpointError(f"{ckpt_dir / 'config.json'}: no 'model' section")
    validate_config_dict(info["model"], ckpt_dir / "config.json")
    try:
        cfg = GPTConfig.from_dict(info["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_dir / 'config.json'}: bad model config: {e}") from e
    model = GPT(cfg)
    tensors = load_tensors(ckpt_dir / "model.safetensors")
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
        tensors["lm_head.weight"] = tensors.get("tok_emb.weight", torch.empty(0))
    load_into(model, tensors, str(ckpt_dir / "model.safetensors"))
    return model.to(device), info


def train_state_files(optimizer: torch.optim.Optimizer, counters: dict) -> tuple[dict, dict]:
    """Optimizer moments + RNG state as tensors, counters and hyperparameters as JSON
    -> (tensors for state.safetensors, object for state.json)."""
    sd = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    scalars = {}
    for idx, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"counters": counters, "param_groups": sd["param_groups"], "scalars": scalars}


def save_train_state(out_dir: str | Path, optimizer: torch.optim.Optimizer, counters: dict) -> None:
    """state.safetensors + state.json straight into out_dir (the single-directory layout)."""
    tensors, meta = train_state_files(optimizer, counters)
    save_tensors(tensors, Path(out_dir) / "state.safetensors")
    write_json(meta, Path(out_dir) / "state.json")


def load_train_state(ckpt_dir: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer and RNG state of a run directory's current unit (or of a
    checkpoint directory); returns the counters. Refuses a unit whose files disagree on the step."""
    ckpt_dir = current_checkpoint(ckpt_dir) or Path(ckpt_dir)
    step = verify_checkpoint(ckpt_dir)
    meta = read_json(ckpt_dir / "state.json")
    if step is not None and meta.get("counters", {}).get("step") != step:
        raise CheckpointError(f"{ckpt_dir / 'state.json'}: counters say step {meta.get('counters', {}).get('step')}, "
                              f"the checkpoint is step {step}")
    tensors = load_tensors(ckpt_dir / "state.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt_dir}: optimizer state does not fit this run: {e}") from e
    torch.set_rng_state(tensors["rng.torch"])
    return meta["counters"]


# ---------------------------------------------------------------- checkpoint units
POINTER, MANIFEST, STEP_KEY = "checkpoint.json", "manifest.json", "checkpoint_step"
# What the single-directory layout kept in the run directory itself; a unit replaces them all.
LEGACY_FILES = ("model.safetensors", "adapter.safetensors", "adapter.json", "config.json", "state.safetensors",
                "state.json", "value_head.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "template.json")
WEIGHT_FILES = ("model.safetensors", "adapter.safetensors")


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a process kill does not need it; a power cut does)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unit_name(out_dir: Path, step: int) -> str:
    name, k = f"step-{step:06d}", 1
    while (out_dir / name).exists():  # the same step saved again (e.g. Ctrl-C right after --save-every)
        name, k = f"step-{step:06d}.{k}", k + 1
    return name


def save_checkpoint(out_dir: str | Path, step: int, tensors_by_file: dict[str, dict[str, torch.Tensor]],
                    json_by_file: dict[str, dict], optimizer: torch.optim.Optimizer | None = None,
                    copy_files: dict[str, str | Path] | None = None, write_files=None) -> Path:
    """Write one step as a unit and make it current -> the unit directory.

    tensors_by_file: file name -> {tensor name -> tensor}, e.g. {"model.safetensors": ...,
    "value_head.safetensors": ...}; json_by_file: file name -> object ({"config.json": ...});
    optimizer: its state and the RNG state go to state.safetensors / state.json (counters
    {"step": step}); copy_files: file name -> source path copied as is (tokenizer.model);
    write_files: a function that writes more files into the unit's directory it is given
    (a tokenizer's save). Copied and written files are kept as they are, without the step:
    the manifest lists them as "unstamped" and checks only their size.
    Refuses (NonFiniteError) before writing anything if a float tensor holds a NaN or inf
    (the optimizer's moments included: a NaN there poisons every later step).
    """
    from minipost import guards

    out_dir = Path(out_dir)
    tensors_by_file, json_by_file = dict(tensors_by_file), dict(json_by_file)
    if optimizer is not None:
        tensors_by_file["state.safetensors"], json_by_file["state.json"] = train_state_files(optimizer, {"step": step})
    for fname, tensors in tensors_by_file.items():
        guards.check_tensors(tensors, step, what=f"{fname} tensor")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".step-{step:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for fname, tensors in tensors_by_file.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            save_file(tensors, str(tmp / fname), metadata={STEP_KEY: str(step)})
        for fname, obj in json_by_file.items():
            (tmp / fname).write_text(json.dumps({**obj, STEP_KEY: step}, indent=2, sort_keys=True) + "\n")
        stamped = {p.name for p in tmp.iterdir()}
        for fname, src in (copy_files or {}).items():
            shutil.copyfile(src, tmp / fname)
        if write_files is not None:
            write_files(tmp)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        unstamped = sorted(set(sizes) - stamped)
        (tmp / MANIFEST).write_text(json.dumps({STEP_KEY: step, "files": sizes, "unstamped": unstamped},
                                               indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        unit = out_dir / _unit_name(out_dir, step)
        os.rename(tmp, unit)  # the unit appears whole; the pointer below makes it current
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out_dir)
    write_json({"current": unit.name, STEP_KEY: step}, out_dir / POINTER)
    _fsync_dir(out_dir)
    remove_stale(out_dir)
    return unit


def remove_stale(out_dir: str | Path) -> None:
    """Delete what the current unit replaced: older and half-written units, and the files of
    the single-directory layout (a LoRA run into a full run's directory must not leave the
    old model.safetensors beside its adapter)."""
    out_dir = Path(out_dir)
    current = current_checkpoint(out_dir)
    if current is None or current == out_dir:
        return
    for p in out_dir.iterdir():
        stale_unit = p.is_dir() and p.name.startswith(("step-", ".step-")) and p != current
        if stale_unit:
            shutil.rmtree(p, ignore_errors=True)
        elif p.name in LEGACY_FILES or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()):
            p.unlink(missing_ok=True)


def current_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint directory holding a run's current weights: the unit named by
    run_dir/checkpoint.json; run_dir itself for the single-directory layout; None if neither.
    A directory with both a full model and an adapter (of two runs) is refused."""
    run_dir = Path(run_dir)
    pointer = run_dir / POINTER
    if pointer.is_file():
        name = read_json(pointer).get("current")
        unit = run_dir / str(name)
        if not isinstance(name, str) or "/" in name or not unit.is_dir():
            raise CheckpointError(f"{pointer}: names {name!r}, which is not a checkpoint directory in {run_dir}")
        return unit
    present = [f for f in WEIGHT_FILES if (run_dir / f).is_file()]
    if len(present) == 2:
        peft = read_json(run_dir / "config.json").get("peft") if (run_dir / "config.json").is_file() else None
        stale = {None: "one of them", "none": "adapter.safetensors + adapter.json"}.get(peft, "model.safetensors")
        raise CheckpointError(f"{run_dir}: holds both model.safetensors and adapter.safetensors, left by two "
                              f"different runs (config.json says peft={peft!r}, so {stale} is stale); delete "
                              f"the stale file or run the stage again with --overwrite")
    return run_dir if present else None


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The directory to read a run's checkpoint files from, checked whole -> its current unit,
    or the run directory itself for the single-directory layout of earlier runs. Every reader
    of a run (load_stage_model, --resume, chat, export, merge, the value heads) goes through
    here, so both layouts load everywhere. CheckpointError if the run holds no checkpoint."""
    ckpt = current_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{run_dir}: no checkpoint (neither {POINTER} nor model.safetensors / "
                              f"adapter.safetensors)")
    verify_checkpoint(ckpt)
    return ckpt


def tensor_file_step(path: str | Path) -> int | None:
    """The checkpoint step in a safetensors file's metadata (None if it carries none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    return int(meta[STEP_KEY]) if STEP_KEY in meta else None


def verify_checkpoint(ckpt_dir: str | Path) -> int | None:
    """Check that every file of a unit is there, whole, and of the same step -> the step
    (None for a directory of the single-directory layout, which carries no steps)."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MANIFEST).is_file():
        return None
    manifest = read_json(ckpt_dir / MANIFEST)
    step = manifest.get(STEP_KEY)
    unstamped = set(manifest.get("unstamped", []))
    for fname, size in manifest.get("files", {}).items():
        path = ckpt_dir / fname
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"{path}: missing or of the wrong size (the manifest of step {step} says "
                                  f"{size} bytes); the checkpoint is incomplete")
        if fname in unstamped:  # copied as is (the tokenizer): its size is all there is to check
            continue
        if fname.endswith(".safetensors"):
            found = tensor_file_step(path)
        elif fname.endswith(".json"):
            found = read_json(path).get(STEP_KEY)
        else:
            continue
        if found != step:
            raise CheckpointError(f"{path}: belongs to step {found}, but the checkpoint is step {step}; "
                                  f"its files come from different saves")
    return step
