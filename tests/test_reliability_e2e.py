"""The reliability mechanisms wired into the stages (docs/failure-cases.md), end to end on tiny runs:
a diverging run stops with one NonFiniteError and leaves only finite checkpoints, bad flags and
bad --out directories are refused with one line before anything trains, and --resume does not
log a replayed step twice."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minipost import checkpoint, cli
from minipost.guards import NonFiniteError
from tests.stages.test_dpo import run_dpo, sft_dir, tiny  # noqa: F401  (fixtures)
from tests.stages.test_rl import rl_setup, stage_args  # noqa: F401  (fixtures)
from tests.stages.test_sft import TINY, base_dir  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def assert_saved_weights_finite_and_load(out: Path, failed_at: int | None):
    """Every tensor file in the run is finite; the checkpoint left behind loads and is the
    step before the failure."""
    for f in out.rglob("*.safetensors"):
        for name, t in load_file(f).items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), f"{f}: {name} holds NaN/inf"
    unit = checkpoint.current_checkpoint(out)
    if unit is not None and (unit / "state.json").is_file():
        step = json.loads((unit / "state.json").read_text())["counters"]["step"]
        if failed_at is not None:
            assert step == failed_at - 1
        model, _ = checkpoint.load_model(out)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def diverge(run, out):
    with pytest.raises(NonFiniteError, match=r"non-finite .*stopping without saving") as err:
        run()
    step = err.value.step
    assert step is None or step >= 1
    assert_saved_weights_finite_and_load(out, step)
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    return err.value


def test_sft_with_an_absurd_lr_stops_and_keeps_finite_checkpoints(base_dir, tmp_path):  # noqa: F811
    out = tmp_path / "sft"
    args = ["--stage", "sft", "--init", str(base_dir), "--out", str(out), *TINY, "--steps", "6",
            "--lr", "1e30", "--warmup", "0", "--save-every", "1"]
    err = diverge(lambda: cli.run(args), out)
    assert err.step is not None and (checkpoint.checkpoint_dir(out) / "state.json").is_file()


def test_dpo_with_an_absurd_lr_stops_and_keeps_finite_checkpoints(sft_dir, tmp_path):  # noqa: F811
    out = tmp_path / "dpo"
    diverge(lambda: run_dpo(sft_dir, out, "--steps", "6", "--lr", "1e30", "--warmup", "0", "--save-every", "1"),
            out)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_with_an_absurd_lr_stops_and_keeps_finite_checkpoints(rl_setup, tmp_path, stage):  # noqa: F811
    ckpt, train, val, _ = rl_setup
    out = tmp_path / stage
    args = stage_args(stage, ckpt, train, val, out, "--save-every", "1")
    args[args.index("--steps") + 1], args[args.index("--lr") + 1] = "6", "1e30"
    diverge(lambda: cli.run(args), out)


def test_a_nan_gradient_with_a_finite_loss_stops_before_the_update():
    from minipost.training import clip_and_step

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    w.grad = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(NonFiniteError, match=r"non-finite grad norm \(nan\) at step 4"):
        clip_and_step(opt, 0.5, 3)
    assert torch.equal(w.detach(), torch.ones(3))  # the weights did not move


def test_resume_after_a_replay_logs_each_step_once(base_dir, tmp_path, monkeypatch):  # noqa: F811
    from minipost.stages import common as stage_common

    out = tmp_path / "sft"
    common = ["--stage", "sft", "--init", str(base_dir), "--out", str(out), *TINY, "--steps", "4",
              "--save-every", "2"]
    # As after a SIGKILL: step 2 is the last one saved (the Ctrl-C save of step 3 never happens),
    # and step 3 and a torn fourth line were logged after it.
    real_save = stage_common.save_stage
    monkeypatch.setattr(stage_common, "save_stage", lambda *a, **k: None if a[4] == 3 else real_save(*a, **k))
    with pytest.raises(SystemExit):
        cli.run([*common, "--interrupt-at", "3"])
    monkeypatch.undo()
    assert checkpoint.verify_checkpoint(checkpoint.checkpoint_dir(out)) == 2
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    cli.run([*common, "--resume"])
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# ------------------------------------------------------------------ refused before anything trains
def refused(argv, match):
    with pytest.raises(SystemExit) as e:
        cli.run(argv)
    msg = str(e.value.code)
    assert msg.startswith("train.py: error:") and "\n" not in msg and "Traceback" not in msg, msg
    assert match in msg, msg
    return msg


@pytest.mark.parametrize("flags, match", [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--seq-len", "0"], "--seq-len"), (["--save-every", "-1"], "--save-every"),
    (["--warmup", "-5"], "--warmup"), (["--threads", "0"], "--threads"),
    (["--peft", "lora", "--lora-r", "0"], "--lora-r"), (["--lora-dropout", "1"], "--lora-dropout"),
    (["--peft", "lora", "--lora-targets", "q_proj,bogus"], "bogus"),
    (["--device", "cuda:7"], "cuda"), (["--device", "gpu0"], "gpu0"),
])
def test_bad_flags_are_refused_at_parse_time(tmp_path, flags, match):
    stage = "pretrain" if "--seq-len" in flags else "sft"
    refused(["--stage", stage, "--out", str(tmp_path / "o"), *flags], match)
    assert not (tmp_path / "o").exists()


def test_group_size_one_is_refused_for_grpo(tmp_path):
    refused(["--stage", "grpo", "--out", str(tmp_path / "o"), "--group-size", "1"], "--group-size")


def test_out_that_would_destroy_an_input_is_refused(base_dir, tmp_path):  # noqa: F811
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(base_dir), *TINY], "overwrite its own input")
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(base_dir / "inner"), *TINY], "--init")
    link = tmp_path / "link"
    link.symlink_to(base_dir)
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(link), *TINY], "--init")


def test_out_directories_that_are_not_this_run_are_refused(base_dir, tmp_path):  # noqa: F811
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(tmp_path / "new"), *TINY, "--resume"],
            "nothing to resume")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(home), *TINY, "--overwrite"],
            "does not look like a minipost run")
    assert (home / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(tmp_path / "afile" / "run"), *TINY],
            "--out")


def test_another_stage_in_out_needs_overwrite_and_keeps_foreign_files(base_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(out), *TINY])
    refused(["--stage", "pretrain", "--out", str(out), "--resume", *TINY], "stage")
    refused(["--stage", "sft", "--init", str(base_dir), "--out", str(out), *TINY, "--peft", "lora"], "--overwrite")
    (out / "keep.txt").write_text("mine")
    cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(out), *TINY, "--peft", "lora", "--overwrite"])
    assert (out / "keep.txt").read_text() == "mine"
    unit = checkpoint.checkpoint_dir(out)
    assert (unit / "adapter.safetensors").is_file() and not (unit / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == [unit.name]  # the full run's went


def test_train_py_prints_one_line_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--stage", "sft", "--lr", "nan",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error:") and "--lr" in lines[0], r.stderr


def test_a_corpus_shorter_than_one_row_is_refused_in_one_line(small_tokenizer):
    from minipost.stages.pretrain import token_rows

    with pytest.raises(SystemExit, match=r"the pretraining corpus: the corpus has \d+ tokens, fewer than one "
                                         r"training row of --seq-len 10000"):
        token_rows(["the order shipped"], small_tokenizer, 10000)
    assert token_rows(["the order shipped"] * 50, small_tokenizer, 8).shape[1] == 9


def test_preference_pairs_without_a_preference_are_refused(sft_dir, tmp_path):  # noqa: F811
    same = tmp_path / "same.jsonl"
    lines = (sft_dir / "pref_train.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["rejected"] = record["chosen"]
    same.write_text("\n".join([*lines[:2], json.dumps(record), *lines[3:]]) + "\n")
    msg = refused(["--stage", "dpo", "--init", str(sft_dir / "sft"), "--out", str(tmp_path / "d"), "--steps", "1",
                   "--train-file", str(same)], "records [3] have chosen == rejected")
    assert str(same) in msg


def test_sampling_from_diverged_logits_is_one_clear_error():
    from minipost.generate import sample_next

    logits = torch.zeros(3, 7)
    logits[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"sampling probabilities \(rows \[1\]\).*lower --lr"):
        sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    ids = sample_next(torch.zeros(3, 7), temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3,) and bool(((ids >= 0) & (ids < 7)).all())


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_prompts_longer_than_the_context_are_refused(rl_setup, tmp_path, stage):  # noqa: F811
    ckpt, train, val, model = rl_setup
    long_file = tmp_path / "long.jsonl"
    records = [json.loads(x) for x in train.read_text().splitlines()]
    records[1]["prompt"][-1]["content"] = "the order shipped " * (4 * model.cfg.max_seq_len)
    long_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    msg = refused(stage_args(stage, ckpt, long_file, val, tmp_path / "o"), "do not fit the model's context")
    assert str(long_file) in msg and "records [2]" in msg


def test_an_rl_rollout_from_a_diverged_policy_names_the_step(rl_setup, small_tokenizer):  # noqa: F811
    """The sampling check inside generate knows no step; the RL stages' rollout adds it (1-based)."""
    import copy
    from argparse import Namespace

    from minipost.stages import common

    _, train, _, model = rl_setup
    diverged = copy.deepcopy(model)
    with torch.no_grad():
        diverged.lm_head.weight.fill_(float("nan"))
    records = [json.loads(line) for line in train.read_text().splitlines()]
    args = Namespace(prompts_per_step=2, seed=0, group_size=2, max_new_tokens=4, temperature=1.0, device="cpu")
    with pytest.raises(NonFiniteError, match=r"non-finite sampling probabilities \(rows \[0, 1, 2, 3\]\).* at step 5;"):
        common.step_rollout(diverged, small_tokenizer, records, 4, args)


@pytest.mark.parametrize("poisoned", ["weights", "optimizer", "value head"])
def test_a_stage_save_with_any_non_finite_tensor_writes_nothing(base_dir, tmp_path, poisoned):  # noqa: F811
    """save_stage refuses NaN weights, NaN optimizer moments and a NaN head alike, before it
    writes anything: the previous unit stays current and loads."""
    from argparse import Namespace

    from minipost.stages import common
    from minipost.training import make_optimizer
    from minipost.value_head import ValueHead

    model, tok, _ = common.load_stage_model(base_dir)
    head = ValueHead(model.cfg.d_model)
    optimizer = make_optimizer(model, 1e-3)
    model(torch.randint(0, 100, (2, 8))).float().pow(2).mean().backward()
    optimizer.step()
    args = Namespace(out=str(tmp_path / "run"), stage="ppo", seed=0, peft="none", init=str(base_dir))
    common.save_stage(model, tok, args, optimizer, 1, heads={"value_head.safetensors": head})
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with torch.no_grad():
        if poisoned == "weights":
            model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
        elif poisoned == "optimizer":
            next(iter(optimizer.state.values()))["exp_avg_sq"].view(-1)[3] = float("inf")
        else:
            head.proj.bias.fill_(float("nan"))
    what = {"weights": r"model.safetensors tensor 'layers.0.mlp.down_proj.weight' \(1 of",
            "optimizer": r"state.safetensors tensor 'opt.0.exp_avg_sq' \(1 of",
            "value head": r"value_head.safetensors tensor 'proj.bias' \(1 of 1"}[poisoned]
    with pytest.raises(NonFiniteError, match=what + r".* at step 2"):
        common.save_stage(model, tok, args, optimizer, 2, heads={"value_head.safetensors": head})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before == ["checkpoint.json", "step-000001"]
    assert checkpoint.verify_checkpoint(checkpoint.checkpoint_dir(tmp_path / "run")) == 1
    assert all(torch.isfinite(p).all() for p in checkpoint.load_model(tmp_path / "run")[0].parameters())
