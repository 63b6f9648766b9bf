"""SIGKILL at every file boundary of a save, and at random instants: every recovery finds
one complete unit whose files all belong to the same step (issue #16.3)."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minipost import checkpoint

ROOT = Path(__file__).resolve().parents[1]

# The child saves steps 1, 2, ...; the value of every tensor and JSON field is the step, so a
# mix of two saves is visible. Given kill points k, it forks once per k (torch is imported
# once): the fork saves step 1, then SIGKILLs itself right after the k-th file operation of
# the save of step 2 (k=0: as that save starts), in OUT/k{k}. Without them it saves forever.
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys, pathlib
    import torch
    from minipost import checkpoint

    out, tok, kill_points = pathlib.Path(sys.argv[1]), sys.argv[2], [int(k) for k in sys.argv[3:]]
    events = {"n": 0, "armed": False, "kill_at": -1}

    def counted(fn):
        def wrapper(*a, **k):
            result = fn(*a, **k)
            if events["armed"]:
                events["n"] += 1
                if events["n"] == events["kill_at"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    checkpoint.save_file = counted(checkpoint.save_file)
    shutil.copyfile, shutil.rmtree = counted(shutil.copyfile), counted(shutil.rmtree)
    os.rename, os.replace = counted(os.rename), counted(os.replace)
    pathlib.Path.write_text = counted(pathlib.Path.write_text)

    def save_steps(run, last):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.AdamW([p], lr=0.1)
        p.grad = torch.ones(3)
        opt.step()
        step = 1
        while last is None or step <= last:
            if step == 2:
                events["armed"] = True
                if events["kill_at"] == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
            with torch.no_grad():
                p.fill_(step)
            for slot in opt.state[p].values():
                if slot.dim():
                    slot.fill_(step)
            checkpoint.save_checkpoint(run, step, {"model.safetensors": {"w": torch.full((64, 64), float(step))},
                                                   "value_head.safetensors": {"h": torch.full((8,), float(step))}},
                                       {"config.json": {"stage": "test", "value": step}}, optimizer=opt,
                                       copy_files={"tokenizer.model": tok})
            step += 1

    warm = torch.nn.Parameter(torch.zeros(1))  # the first AdamW step imports lazily: once, before forking
    warm.grad = torch.ones(1)
    torch.optim.AdamW([warm]).step()
    checkpoint.save_checkpoint(out / "warm", 0, {"a.safetensors": {"w": torch.zeros(1)}}, {})
    if not kill_points:
        save_steps(out / "run", None)
    for k in kill_points:
        pid = os.fork()
        if pid == 0:
            events["kill_at"] = k
            save_steps(out / f"k{k}" / "run", 2)
            print("events", events["n"], flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("killed" if os.WIFSIGNALED(status) else "survived", k, flush=True)
""")


def start_child(tmp_path, kill_points=()):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    tok = tmp_path / "tok.bin"
    tok.write_bytes(os.urandom(5000))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), str(tok), *map(str, kill_points)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), tok


def recovered_step(run: Path, tok: Path) -> int | None:
    """Load what a restart would load and check every file holds the same step."""
    unit = checkpoint.current_checkpoint(run)
    if unit is None:
        return None
    step = checkpoint.verify_checkpoint(unit)
    assert torch.equal(load_file(unit / "model.safetensors")["w"], torch.full((64, 64), float(step)))
    assert torch.equal(load_file(unit / "value_head.safetensors")["h"], torch.full((8,), float(step)))
    assert checkpoint.read_json(unit / "config.json")["value"] == step
    assert (unit / "tokenizer.model").read_bytes() == tok.read_bytes()
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    assert checkpoint.load_train_state(run, opt) == {"step": step}
    assert torch.equal(opt.state[p]["exp_avg"], torch.full((3,), float(step)))
    return step


def test_kill_at_every_file_boundary(tmp_path):
    n_max = 16  # more kill points than a save has file operations (11): the last ones survive
    child, tok = start_child(tmp_path, range(n_max + 1))
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    outcome = dict((int(k), what) for what, k in (line.split() for line in stdout.splitlines()
                                                     if line.startswith(("killed", "survived"))))
    n_events = min(k for k, what in outcome.items() if what == "survived")
    assert n_events >= 9  # 3 tensor files, 2 JSON + manifest, tokenizer, rename, pointer, old unit removed
    assert all(outcome[k] == "killed" for k in range(n_events))
    seen = []
    for k in range(n_events + 1):
        run = tmp_path / f"k{k}" / "run"
        seen.append(recovered_step(run, tok))
        leftovers = [p.name for p in run.iterdir() if p.name != "checkpoint.json"]
        assert checkpoint.current_checkpoint(run).name in leftovers
    # until the pointer is replaced step 1 is current, after it step 2: never anything else
    switch = seen.index(2)
    assert seen == [1] * switch + [2] * (n_events + 1 - switch) and 0 < switch < n_events


@pytest.mark.slow
def test_kill_at_random_instants(tmp_path):
    rng = random.Random(0)
    for trial in range(6):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        child, tok = start_child(d)
        while not (d / "run" / "checkpoint.json").exists() and child.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        child.kill()
        child.wait(timeout=60)
        step = recovered_step(d / "run", tok)
        assert step is not None and step >= 1
