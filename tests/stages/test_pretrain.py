"""The pretraining stage end to end on the tiny preset: resume equals uninterrupted, CPT, CLI errors."""
import json
import re

import pytest
import torch

from minipost import checkpoint, cli

TINY = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "4", "--eval-rows", "8",
        "--vocab-size", "512", "--log-every", "2"]


def read_eval(path):
    return json.loads((path / "eval.json").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


@pytest.mark.slow
def test_resume_after_interrupt_ends_where_an_uninterrupted_run_does(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cli.run(["--stage", "pretrain", "--out", "full", "--steps", "8", *TINY])
    with pytest.raises(SystemExit) as stop:
        cli.run(["--stage", "pretrain", "--out", "cut", "--steps", "8", "--interrupt-at", "3", *TINY])
    assert stop.value.code == 130
    assert json.loads((checkpoint.checkpoint_dir(workdir / "cut") / "state.json").read_text())["counters"]["step"] == 3
    cli.run(["--stage", "pretrain", "--out", "cut", "--steps", "8", "--resume", *TINY])
    full, resumed = read_eval(workdir / "full"), read_eval(workdir / "cut")
    assert abs(full["val_loss"] - resumed["val_loss"]) <= 1e-6
    # Same weights too, not just the same loss.
    from safetensors.torch import load_file

    a, b = (load_file(checkpoint.checkpoint_dir(workdir / d) / "model.safetensors") for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (workdir / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(1, 9))


@pytest.mark.slow
def test_cpt_reports_domain_and_general_loss(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    if not (workdir / "full" / "eval.json").exists():
        cli.run(["--stage", "pretrain", "--out", "full", "--steps", "8", *TINY])
    cli.run(["--stage", "cpt", "--init", "full", "--out", "cpt", "--steps", "4", "--replay", "0.25", *TINY])
    ev = read_eval(workdir / "cpt")
    for key in ("domain_val_loss", "general_val_loss", "domain_val_loss_before", "general_val_loss_before"):
        assert 0 < ev[key] < 20
    assert ev["domain_val_loss"] < ev["domain_val_loss_before"]


def test_unknown_stage_lists_the_choices():
    with pytest.raises(SystemExit, match="unknown stage 'dpx'.*pretrain.*dpo"):
        cli.parse(["--stage", "dpx"])
    with pytest.raises(SystemExit, match="--stage is required"):
        cli.parse([])


def test_bad_flag_values_are_clear_errors(capsys):
    with pytest.raises(SystemExit, match="--steps must be at least 1"):
        cli.parse(["--stage", "pretrain", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.parse(["--stage", "sft", "--mask", "everything"])
    assert "invalid choice" in capsys.readouterr().err


def test_missing_init_that_is_not_a_stage_output_is_an_error(tmp_path):
    args = cli.parse(["--stage", "sft", "--init", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no config.json"):
        cli.ensure_stage_output(args)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(workdir, monkeypatch):
    from minipost.training import NonFiniteLoss

    monkeypatch.chdir(workdir)
    # An absurd learning rate blows the weights up after the first step.
    with pytest.raises(NonFiniteLoss, match="non-finite (loss|grad norm) .* at step (\\d+)") as err:
        cli.run(["--stage", "pretrain", "--out", "nan", "--steps", "6", "--lr", "1e30", "--warmup", "1",
                 "--save-every", "1", *TINY])
    failed_at = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    saved = json.loads((checkpoint.checkpoint_dir(workdir / "nan") / "state.json").read_text())["counters"]["step"]
    assert saved == failed_at - 1
