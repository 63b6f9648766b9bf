"""SIGKILL inside a real stage run (train.py's cli.run in a subprocess), then --resume: the run
ends with the weights of an uninterrupted run, bit for bit, and logs every step once (issue #16.3).

tests/test_checkpoint_kill.py kills checkpoint.save_checkpoint itself at every file boundary;
here the whole stage path is killed: at random instants after the first save, and at the
three places of a save where the previous or the new unit must be the current one (inside
the new unit, after its rename but before the pointer, after the pointer).
"""
import json
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

from minipost import checkpoint, cli
from minipost.stages.common import load_stage_model
from tests.stages.test_sft import base_dir  # noqa: F401  (fixture: a tiny base run, the earlier flat layout)
from tests.test_distributed import sft_records, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8

# The child: train.py's run, after arranging a SIGKILL at one point of the save of step 2
# (argv[1]: none | in-unit | after-rename | after-pointer).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from minipost import checkpoint, cli

    when, argv = sys.argv[1], sys.argv[2:]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_save_file, real_rename, real_write_json = checkpoint.save_file, os.rename, checkpoint.write_json

    def save_file(tensors, path, metadata=None):  # the first tensor file written into the new unit
        real_save_file(tensors, path, metadata=metadata)
        if when == "in-unit" and (metadata or {}).get(checkpoint.STEP_KEY) == "2":
            die()

    def rename(src, dst):  # the unit is in place, the pointer still names step 1
        real_rename(src, dst)
        if when == "after-rename" and os.path.basename(dst) == "step-000002":
            die()

    def write_json(obj, path):  # the pointer names step 2, the old unit is not yet removed
        real_write_json(obj, path)
        if when == "after-pointer" and obj.get(checkpoint.STEP_KEY) == 2:
            die()

    checkpoint.save_file, os.rename, checkpoint.write_json = save_file, rename, write_json
    cli.run(argv)
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, base_dir):  # noqa: F811
    """(the base run to start from, the folder of the SFT files, the uninterrupted run)."""
    root = tmp_path_factory.mktemp("stage_kill")
    write_jsonl(root / "train.jsonl", sft_records(48, 0))
    write_jsonl(root / "val.jsonl", sft_records(4, 1))
    reference = root / "reference"
    run_here(argv(base_dir, root, reference))
    return base_dir, root, reference


def argv(base: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["--stage", "sft", "--init", str(base), "--out", str(out), "--preset", "tiny", "--steps", str(STEPS),
            "--batch-size", "4", "--seq-len", "64", "--lr", "3e-3", "--warmup", "0", "--max-eval", "2",
            "--log-every", "1", "--save-every", "1", "--threads", "1", "--train-file", str(root / "train.jsonl"),
            "--val-file", str(root / "val.jsonl"), *extra]


def run_here(args: list[str]) -> None:
    """A run that is not killed, in this process (the child's torch import costs more than the run).
    --threads 1 as in the children, so the float sums are the same; this process's setting is kept."""
    threads = torch.get_num_threads()
    try:
        cli.run(args)
    finally:
        torch.set_num_threads(threads)


def start_stage(args: list[str], when: str, log: Path) -> subprocess.Popen:
    """train.py's run in a child process; its output goes to `log` (a pipe nobody reads could fill)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", DRIVER, when, *args], env=env, cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT)


def run_stage(args: list[str], when: str) -> tuple[int, str]:
    """-> (exit status, the tail of its output)."""
    log = Path(args[args.index("--out") + 1]).with_suffix(".log")
    child = start_stage(args, when, log)
    child.wait(timeout=600)
    return child.returncode, log.read_text()[-3000:]


def pointer_step(out: Path) -> int | None:
    try:
        return json.loads((out / checkpoint.POINTER).read_text())[checkpoint.STEP_KEY]
    except (OSError, ValueError, KeyError):  # not written yet (it is replaced atomically, never torn)
        return None


def assert_resumes_to_the_reference(out: Path, reference: Path, base: Path, root: Path) -> None:
    """--resume finishes the run: final weights equal the uninterrupted run's, every step logged once
    with the same loss."""
    run_here(argv(base, root, out, "--resume"))
    want = load_file(checkpoint.checkpoint_dir(reference) / "model.safetensors")
    got = load_file(checkpoint.checkpoint_dir(out) / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit for bit
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in logged] == [r["loss"] for r in expected]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("step-", ".step-"))) == [f"step-{STEPS:06d}"]


@pytest.mark.slow
def test_sigkill_at_a_random_instant_then_resume_is_bit_exact(setup, tmp_path):
    base, root, reference = setup
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    child = start_stage(argv(base, root, out), "none", tmp_path / "killed.log")

    def wait_for_save(step: int) -> float:
        while (pointer_step(out) or 0) < step and child.poll() is None:
            time.sleep(0.002)
        return time.time()

    first = wait_for_save(1)
    step_s = wait_for_save(2) - first  # how long a step (and its save) takes on this machine
    after = rng.randint(2, STEPS - 3)
    wait_for_save(after)
    time.sleep(rng.uniform(0.0, 2 * step_s))  # anywhere in the next two steps, saves included
    assert child.poll() is None, f"seed {seed}: the run ended before the kill"
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    killed_at = pointer_step(out)
    assert killed_at is not None and after <= killed_at < STEPS, (seed, killed_at)
    load_stage_model(out)  # the current unit loads as it is
    assert_resumes_to_the_reference(out, reference, base, root)


@pytest.mark.slow
@pytest.mark.parametrize("when, current", [("in-unit", 1), ("after-rename", 1), ("after-pointer", 2)])
def test_sigkill_inside_a_save_leaves_a_complete_current_unit(setup, tmp_path, when, current):
    base, root, reference = setup
    out = tmp_path / when
    status, output = run_stage(argv(base, root, out), when)
    assert status == -signal.SIGKILL, output
    unit = checkpoint.checkpoint_dir(out)  # every file there, whole, of one step
    assert checkpoint.verify_checkpoint(unit) == current
    assert json.loads((unit / "state.json").read_text())["counters"]["step"] == current
    model, _, info = load_stage_model(out)
    assert info["stage"] == "sft" and info["checkpoint_step"] == current
    assert_resumes_to_the_reference(out, reference, base, root)
