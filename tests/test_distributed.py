"""Data-parallel training under torchrun (minipost/distributed.py).

Two gloo processes on the CPU with batch b must train exactly what one process with batch
2b trains: the same loss at every step (metrics.jsonl) and the same final weights, on data
whose examples carry very different numbers of tokens, so a loss averaged per rank (a mean
of per-rank means) would differ. Only rank 0 writes files.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minipost import checkpoint, cli, distributed
from minipost.config import preset
from minipost.model import GPT
from minipost.packing import batches
from minipost.stages import sft

REPO = Path(__file__).resolve().parents[1]
WORDS = "the order shipped kettle mug lamp arrives March refund return your tracking code thanks".split()
# A 3-step run: the pointer and the unit of step 3 beside the logs; the unit's own files.
RUN_FILES = {"checkpoint.json", "step-000003", "metrics.jsonl", "eval.json", "curves.png"}
CHECKPOINT_FILES = {"model.safetensors", "config.json", "tokenizer.model", "state.safetensors", "state.json",
                    "manifest.json"}
SEED = 1234


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def sft_records(n, seed):
    """Conversations with replies of 1 word (three in four) or 80 words: very unequal token counts."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"where is my order #{i}? " + words(rng, rng.randint(1, 8))},
                          {"role": "assistant", "content": words(rng, 80 if i % 4 == 0 else 1)}],
             "meta": {"fact": "March"}} for i in range(n)]


def pref_records(n, seed):
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"where is my order #{i}? " + words(rng, rng.randint(1, 30))}],
             "chosen": words(rng, rng.randint(1, 40)), "rejected": words(rng, rng.randint(1, 40))} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_tokenizer):
    d = tmp_path_factory.mktemp("ddp")
    base = d / "base"
    torch.manual_seed(0)
    checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), base, stage="pretrain")
    shutil.copyfile(small_tokenizer.path, base / "tokenizer.model")
    files = {"sft_train": write_jsonl(d / "sft_train.jsonl", sft_records(16, 0)),
             "sft_val": write_jsonl(d / "sft_val.jsonl", sft_records(3, 1)),
             "pref_train": write_jsonl(d / "pref_train.jsonl", pref_records(12, 2)),
             "pref_val": write_jsonl(d / "pref_val.jsonl", pref_records(3, 3))}
    return base, files, small_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(argv, cwd: Path):
    """train.py under torchrun with 2 gloo processes (one thread each), in cwd."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(REPO / "train.py"), *argv]
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(one: Path, two: Path, keys, init: Path, lr: float):
    """Same steps and logged numbers (metrics are rounded to 6 decimals; equal to 1e-5 of their
    size), same final weights.

    Splitting a batch changes the float rounding a little (other padded widths, another
    summation order). Adam moves each weight by lr * g / (|g| + eps), so for an entry whose
    gradient is within rounding of zero that rounding becomes a weight change of a fraction
    of lr: here up to lr / 70 (1.4e-5 in the DPO run at lr 1e-3). So the weights must agree
    to lr / 50, while a wrong reduction across ranks changes every entry by the order of lr;
    and training must have moved them by over 1e-3, so the agreement means something.
    """
    m1, m2 = metrics(one), metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] and len(m1) >= 2
    compared = []
    for r1, r2 in zip(m1, m2):
        for k in keys:
            if k == "rewards/accuracies" and max(abs(r1["rewards/margins"]), abs(r2["rewards/margins"])) < 1e-4:
                continue  # policy = reference still (step 1): the rewards are rounding noise, their order too
            # float32 rounding is relative to a number's size (grad_norm ~3.5, loss ~0.69)
            assert abs(r1[k] - r2[k]) <= 1e-5 * max(1.0, abs(r1[k])), (k, r1, r2)
            compared.append(k)
    assert "rewards/accuracies" not in keys or compared.count("rewards/accuracies") >= 2
    w1, w2, w0 = (load_file(checkpoint.checkpoint_dir(d) / "model.safetensors") for d in (one, two, init))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= lr / 50
    # ...and training moved the weights far more than that, so the equality means something.
    assert max((w1[k] - w0[k]).abs().max().item() for k in w1) > 1e-3


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.launched() and not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.init("cpu") == "cpu"
    assert [distributed.shard_index(k) for k in range(3)] == [0, 1, 2]
    assert distributed.shard([1, 2, 3]) == [1, 2, 3] and distributed.all_sum(2.5) == 2.5
    record = {"loss": 1.5, "n": 3, "name": "x"}
    assert distributed.sum_across_ranks(record) == record and distributed.mean_across_ranks(record) == record
    synced = distributed.wrap(torch.nn.Linear(2, 2))
    assert synced.ddp is None and synced(lambda a, b: a * b, 3, 4, sync=False) == 12


@pytest.mark.slow
def test_sft_two_processes_equal_one_with_twice_the_batch(setup, tmp_path):
    base, files, tok = setup
    common = ["--stage", "sft", "--init", str(base), "--preset", "tiny", "--packing", "off", "--steps", "3",
              "--grad-accum", "2", "--lr", "2e-3", "--warmup", "1", "--log-every", "1", "--max-eval", "1",
              "--train-file", files["sft_train"], "--val-file", files["sft_val"], "--seed", str(SEED)]

    # The test means something only if the ranks' shares of a step differ in tokens: at
    # step s, rank r takes the per-process batches (s * 2 + i) * 2 + r of size 2, i = 0, 1
    # (8 per epoch of 16 rows).
    records = [json.loads(line) for line in Path(files["sft_train"]).read_text().splitlines()]
    rows = sft.make_rows(sft.tokenize(records, tok, "prompt", 256, "train"), tok, 256, "off")
    tokens = [(next(batches(rows, 2, SEED, epoch=k // 8, start=k % 8))["targets"] != -100).sum().item()
              for k in range(12)]
    per_rank = [[tokens[(s * 2 + i) * 2 + r] for r in (0, 1) for i in (0, 1)] for s in range(3)]
    per_rank = [(a + b, c + d) for a, b, c, d in per_rank]
    assert max(max(p) / min(p) for p in per_rank) > 2, per_rank

    one = tmp_path / "one" / "sft"
    ev1 = cli.run([*common, "--batch-size", "4", "--out", str(one)])
    work = tmp_path / "two"
    torchrun([*common, "--batch-size", "2", "--out", "sft"], cwd=work)
    two = work / "sft"

    assert_same_training(one, two, ("loss", "grad_norm", "lr"), base, lr=2e-3)
    ev2 = json.loads((two / "eval.json").read_text())
    assert abs(ev1["val_loss"] - ev2["val_loss"]) <= 1e-5
    # Only rank 0 wrote: the files of a one-process run, nothing else, nowhere else.
    assert set(os.listdir(two)) == set(os.listdir(one)) == RUN_FILES
    assert set(os.listdir(two / "step-000003")) == set(os.listdir(one / "step-000003")) == CHECKPOINT_FILES
    assert os.listdir(work) == ["sft"]


@pytest.mark.slow
def test_dpo_two_processes_equal_one_with_twice_the_batch(setup, tmp_path):
    base, files, _ = setup
    common = ["--stage", "dpo", "--init", str(base), "--preset", "tiny", "--steps", "3", "--lr", "1e-3",
              "--beta", "0.1", "--warmup", "1", "--log-every", "1", "--max-eval", "1", "--max-new-tokens", "4",
              "--train-file", files["pref_train"], "--val-file", files["pref_val"],
              "--eval-file", files["sft_val"], "--seed", str(SEED)]
    one = tmp_path / "one" / "dpo"
    ev1 = cli.run([*common, "--batch-size", "4", "--out", str(one)])
    work = tmp_path / "two"
    torchrun([*common, "--batch-size", "2", "--out", "dpo"], cwd=work)
    two = work / "dpo"

    assert_same_training(one, two, ("loss", "grad_norm", "rewards/chosen", "rewards/rejected",
                                    "rewards/accuracies", "rewards/margins"), base, lr=1e-3)
    ev2 = json.loads((two / "eval.json").read_text())
    assert ev1["pref_accuracy"] == ev2["pref_accuracy"]
    assert set(os.listdir(two)) == set(os.listdir(one)) == RUN_FILES | {"ref_logps.safetensors"}
    assert set(os.listdir(two / "step-000003")) == set(os.listdir(one / "step-000003")) == CHECKPOINT_FILES
    assert os.listdir(work) == ["dpo"]
