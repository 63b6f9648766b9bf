"""GRPO and RLOO stages on the tiny preset: micro-batch weighting, smoke runs, Ctrl-C.

The starting "SFT" checkpoint is a tiny model taught in a few steps to answer every prompt
with "Total: $5" or "Total: $6" (half each) while the right answer is 5, so every group of
samples has rewards that differ (1.1 vs 0.1) and a policy-gradient step has a signal.
"""
import json
import random
import shutil
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minipost import checkpoint, cli
from minipost.chat import render_completion
from minipost.config import preset
from minipost.losses import grpo_loss
from minipost.model import GPT
from minipost.rollout import completion_logps, rollout
from minipost.stages.rl import micro_loss, n_items
from minipost.training import ItemWeighted


def accumulate(model, ro, adv, ref, args):
    """The update of stages/rl.py: micro-batches of args.batch_size rows through ItemWeighted."""
    rows = [slice(i, i + args.batch_size) for i in range(0, len(ro.texts), args.batch_size)]
    acc = ItemWeighted([n_items(args, ro.rows(r)) for r in rows])
    for r in rows:
        mb = ro.rows(r)
        acc.backward(micro_loss(args, completion_logps(model, mb), mb, adv[r], None if ref is None else ref[r])[0])


def rl_records(n, seed):
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": f"Order {rng.randint(10, 99)}: total?"}], "answer": "5"}
            for _ in range(n)]


def teach_two_answers(tok, steps=40, seed=0):
    """A tiny GPT that replies "Total: $6" (4 times in 7) or "Total: $5" (then <|end|>) to the
    RL prompts: greedy says $6, sampling says $5 often enough for RL to find it."""
    torch.manual_seed(seed)
    model = GPT(preset("tiny", tok.vocab_size))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    recs = rl_records(16, seed)
    rows = [render_completion(r["prompt"], f"Total: ${6 if i < 4 else 5}", tok) for r in recs for i in range(7)]
    width = max(len(x) for x, _ in rows)
    ids = torch.tensor([x + [tok.pad_id] * (width - len(x)) for x, _ in rows])
    targets = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    for _ in range(steps):
        loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture(scope="session")
def rl_setup(small_tokenizer, tmp_path_factory):
    """(checkpoint dir, train file, val file, model) for the stage smoke runs."""
    root = tmp_path_factory.mktemp("rl")
    model = teach_two_answers(small_tokenizer)
    ckpt = root / "sft"
    checkpoint.save_model(model, ckpt, stage="sft")
    shutil.copyfile(small_tokenizer.path, ckpt / "tokenizer.model")
    write_jsonl(root / "train.jsonl", rl_records(16, 0))
    write_jsonl(root / "val.jsonl", rl_records(6, 1))
    return ckpt, root / "train.jsonl", root / "val.jsonl", model


def stage_args(stage, ckpt, train, val, out, *extra):
    return ["--stage", stage, "--init", str(ckpt), "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--max-eval", "4", "--train-file", str(train), "--val-file", str(val), "--group-size", "4",
            "--prompts-per-step", "2", "--max-new-tokens", "8", "--batch-size", "3", "--lr", "1e-3",
            "--warmup", "0", *extra]


def changed(ckpt, out):
    a, b = (load_file(checkpoint.checkpoint_dir(d) / "model.safetensors") for d in (ckpt, out))
    assert a.keys() == b.keys()
    return sum(not torch.equal(a[k], b[k]) for k in a), len(a)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_micro_batches_give_the_full_batch_gradient(rl_setup, small_tokenizer, loss_type):
    _, train, _, model = rl_setup
    recs = [json.loads(line) for line in train.read_text().splitlines()][:2]
    ro = rollout(model, small_tokenizer, recs, 4, 8, generator=torch.Generator().manual_seed(0))
    adv = torch.randn(8, dtype=torch.float64).float()
    ref = ro.old_logps - 0.1 * torch.rand_like(ro.old_logps)
    args = Namespace(stage="grpo", batch_size=3, beta=0.2, epsilon=0.2, epsilon_high=0.3, loss_type=loss_type,
                     max_new_tokens=8)
    grads = []
    for bs in (3, 8):  # three uneven micro-batches vs the whole batch at once
        model.zero_grad()
        args.batch_size = bs
        accumulate(model, ro, adv, ref, args)
        grads.append([p.grad.clone() for p in model.parameters()])
    # And the whole-batch loss computed directly, as the reference.
    model.zero_grad()
    loss, _ = grpo_loss(completion_logps(model, ro), ro.old_logps, adv, ro.mask, ref, 0.2, 0.2, 0.3, loss_type, 8)
    loss.backward()
    for a, b, c in zip(*grads, [p.grad for p in model.parameters()]):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-4) and torch.allclose(b, c, atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_rloo_micro_batches_give_the_full_batch_gradient(rl_setup, small_tokenizer):
    _, train, _, model = rl_setup
    recs = [json.loads(line) for line in train.read_text().splitlines()][:2]
    ro = rollout(model, small_tokenizer, recs, 4, 8, generator=torch.Generator().manual_seed(0))
    adv = torch.randn(8)
    grads = []
    for bs in (3, 8):
        model.zero_grad()
        accumulate(model, ro, adv, None, Namespace(stage="rloo", batch_size=bs, epsilon=0.2))
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    model.zero_grad()


@pytest.mark.parametrize("stage,extra", [
    ("grpo", ["--inner-epochs", "2", "--epsilon-high", "0.28", "--beta", "0"]),  # no reference kept
    ("rloo", ["--beta", "0.05", "--test-file", "VAL"]),  # the validation prompts as the test split too
])
def test_stage_smoke_run(rl_setup, tmp_path, stage, extra):
    ckpt, train, val, _ = rl_setup
    out = tmp_path / stage
    ev = cli.run(stage_args(stage, ckpt, train, val, out, *[str(val) if a == "VAL" else a for a in extra]))
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk["task_accuracy"] == ev["task_accuracy"]
    test_keys = {"test_task_accuracy", "test_task_accuracy_before"}
    if "--test-file" in extra:  # greedy: the same prompts give the same numbers under the test names
        assert ev["test_task_accuracy"] == ev["task_accuracy"]
        assert ev["test_task_accuracy_before"] == ev["task_accuracy_before"]
    else:  # own --val-file and no --test-file: no test numbers
        assert not test_keys & set(ev)
    for key in ("task_accuracy_before", "task_accuracy"):
        assert 0.0 <= ev[key] <= 1.0
        assert ev[key] * 4 == round(ev[key] * 4)  # a fraction of the 4 held-out prompts
    n_changed, n = changed(ckpt, out)
    assert n_changed == n  # every tensor moved (lr 1e-3, rewards differ within groups)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        for key in ("reward_mean", "reward_std", "task_acc", "clip_frac", "completion_len", "zero_std_frac"):
            assert key in s
        assert ("kl" in s) == (stage == "rloo")  # logged only when a reference is kept (beta > 0)
        assert 0 <= s["task_acc"] <= 1 and 0 <= s["zero_std_frac"] <= 1 and 1 <= s["completion_len"] <= 8
        assert s["reward_std"] > 0  # the setup gives the update a signal
    if stage == "rloo":
        assert all(s["kl"] != 0 for s in steps[1:])  # the reference is kept and differs after a step
    assert json.loads((checkpoint.checkpoint_dir(out) / "state.json").read_text())["counters"]["step"] == 2


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    out = tmp_path / "cut"
    with pytest.raises(SystemExit) as stop:
        cli.run(stage_args("grpo", ckpt, train, val, out, "--interrupt-at", "1"))
    assert stop.value.code == 130
    unit = checkpoint.checkpoint_dir(out)
    assert json.loads((unit / "state.json").read_text())["counters"]["step"] == 1
    assert (unit / "model.safetensors").is_file() and not (out / "eval.json").exists()
    before = json.loads((unit / "config.json").read_text())["task_accuracy_before"]
    ev = cli.run(stage_args("grpo", ckpt, train, val, out, "--resume"))
    assert ev["task_accuracy_before"] == before
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_group_size_one_is_refused(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    args = stage_args("rloo", ckpt, train, val, tmp_path / "x")
    args[args.index("--group-size") + 1] = "1"
    with pytest.raises(SystemExit, match="group-size must be at least 2"):
        cli.run(args)


def test_lora_run_uses_the_adapter_off_model_as_reference(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    out = tmp_path / "lora"
    ev = cli.run(stage_args("grpo", ckpt, train, val, out, "--peft", "lora", "--lora-r", "4", "--beta", "0.1"))
    assert 0.0 <= ev["task_accuracy"] <= 1.0
    unit = checkpoint.checkpoint_dir(out)
    assert (unit / "adapter.safetensors").is_file() and not (unit / "model.safetensors").exists()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # fresh LoRA (B = 0): policy == reference
    assert steps[1]["kl"] > 0  # after one step the adapters moved the policy away from it


def learns_the_toy(stage, rl_setup, out, *extra):
    """8 steps on the toy task: held-out accuracy goes from 0 (greedy says $6) to 1 (says $5)."""
    ckpt, train, val, _ = rl_setup
    args = stage_args(stage, ckpt, train, val, out, *extra)
    args[args.index("--steps") + 1], args[args.index("--max-eval") + 1] = "8", "6"
    ev = cli.run(args)
    acc = [json.loads(line)["task_acc"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert ev["task_accuracy"] - ev["task_accuracy_before"] >= 0.5  # the update has the right sign
    # and the sampled batches improve on the untrained policy's (step 1 samples before any update;
    # 8 samples a step are noisy, so the last 3 steps are averaged)
    assert sum(acc[-3:]) / 3 > acc[0]
    return ev


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_stage_learns_the_toy_task(rl_setup, tmp_path, stage):
    learns_the_toy(stage, rl_setup, tmp_path / stage)


def run_record(out):
    """What a run wrote, less its clock readings: metrics.jsonl without the *_s timings and
    items_per_s, eval.json without wall_time_s, and every saved tensor."""
    def untimed(record):
        return {k: v for k, v in record.items() if not k.endswith("_s") and k != "items_per_s"}
    steps = [untimed(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]
    unit = checkpoint.checkpoint_dir(out)  # the run's current checkpoint unit
    tensors = {f.name: load_file(f) for f in sorted(unit.glob("*.safetensors"))}
    return steps, untimed(json.loads((out / "eval.json").read_text())), tensors


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rloo"])
def test_same_seed_same_run_bit_for_bit(rl_setup, tmp_path, monkeypatch, stage):
    """docs/DESIGN.md: on a CPU the same seed gives the same numbers. Two PPO runs of the default
    model differed from their second step on under two torch threads, which every run got: the
    --threads default (1 on a machine of 2 cores) was never applied. The tiny model repeats
    itself under either count, so the test also checks that cli.run sets the one thread."""
    ckpt, train, val, _ = rl_setup
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    runs = []
    try:
        for name in ("first", "second"):
            torch.set_num_threads(2)
            cli.run(stage_args(stage, ckpt, train, val, tmp_path / name, "--steps", "3"))
            assert torch.get_num_threads() == 1
            runs.append(run_record(tmp_path / name))
    finally:
        torch.set_num_threads(threads)
    (steps_a, eval_a, tensors_a), (steps_b, eval_b, tensors_b) = runs
    assert [s["step"] for s in steps_a] == [1, 2, 3] and steps_a == steps_b and eval_a == eval_b
    assert tensors_a.keys() == tensors_b.keys() and "model.safetensors" in tensors_a
    for name in tensors_a:
        assert tensors_a[name].keys() == tensors_b[name].keys()
        assert all(torch.equal(tensors_a[name][k], tensors_b[name][k]) for k in tensors_a[name]), name


def test_threads_flag_overrides_the_default(rl_setup, tmp_path, monkeypatch):
    ckpt, train, val, _ = rl_setup
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        cli.run(stage_args("grpo", ckpt, train, val, tmp_path / "t", "--steps", "1", "--threads", "2"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
