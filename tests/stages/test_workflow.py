"""--stage all: the chain of stages, skipping finished ones, and the report at the end."""
import json

import pytest

from minipost import cli
from minipost.stages import workflow


def fake_stages(tmp_path, monkeypatch) -> list[list[str]]:
    """Replace every stage but `all` with one that records its argv and writes an empty
    eval.json in its --out; returns the list the calls go into."""
    calls = []
    real_run = cli.run

    def fake_stage(argv):
        if argv[argv.index("--stage") + 1] == "all":
            return real_run(argv)
        calls.append(argv)
        out = tmp_path / argv[argv.index("--out") + 1]
        out.mkdir(parents=True)
        (out / "eval.json").write_text("{}")

    monkeypatch.setattr(cli, "run", fake_stage)
    return calls


def test_rerun_after_completion_trains_nothing_and_rebuilds_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, stage in enumerate(workflow.DEFAULT_CHAIN):
        (tmp_path / "out" / stage).mkdir(parents=True)
        (tmp_path / "out" / stage / "eval.json").write_text(json.dumps({"score": i / 10, "wall_time_s": 1.0}))
    ran = []
    real_run = cli.run

    def guarded(argv):
        if "--stage" in argv and argv[argv.index("--stage") + 1] != "all":
            ran.append(argv)
            raise AssertionError(f"a finished stage was run again: {argv}")
        return real_run(argv)

    monkeypatch.setattr(cli, "run", guarded)
    guarded(["--stage", "all"])
    assert ran == []
    report = (tmp_path / "out" / "report.md").read_text()
    for i, stage in enumerate(workflow.DEFAULT_CHAIN):
        assert f"| {stage} | score={i / 10:.4g} | 1 | - |" in report


def test_chain_passes_each_policy_checkpoint_to_the_next_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_stages(tmp_path, monkeypatch)
    cli.run(["--stage", "all", "--stages", "pretrain,sft,rm,dpo,grpo", "--peft", "lora"])
    inits = {a[a.index("--stage") + 1]: (a[a.index("--init") + 1] if "--init" in a else None) for a in calls}
    assert inits == {"pretrain": None, "sft": "out/pretrain", "rm": "out/sft", "dpo": "out/sft", "grpo": "out/dpo"}
    peft_of = {a[a.index("--stage") + 1]: ("--peft" in a) for a in calls}
    assert peft_of == {"pretrain": False, "sft": True, "rm": True, "dpo": True, "grpo": True}


def test_unknown_stage_in_chain_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown stage"):
        cli.run(["--stage", "all", "--stages", "pretrain,sfx"])


def test_chain_from_a_real_model_skips_pretraining_and_passes_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_stages(tmp_path, monkeypatch)
    cli.run(["--stage", "all", "--init", "smollm2"])
    flag = lambda a, name: a[a.index(name) + 1]  # noqa: E731
    assert [flag(a, "--stage") for a in calls] == list(workflow.FROM_INIT_CHAIN)
    assert {flag(a, "--stage"): flag(a, "--init") for a in calls} == {
        "sft": "smollm2", "rm": "out/smollm2/sft", "dpo": "out/smollm2/sft", "grpo": "out/smollm2/dpo"}
    assert {flag(a, "--recipe") for a in calls} == {"smollm2"}
    assert (tmp_path / "out" / "smollm2" / "report.md").is_file()


def test_out_gives_the_chain_its_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = fake_stages(tmp_path, monkeypatch)
    cli.run(["--stage", "all", "--init", "smollm2", "--out", "runs/chain"])
    flag = lambda a, name: a[a.index(name) + 1]  # noqa: E731
    assert {flag(a, "--stage"): (flag(a, "--out"), flag(a, "--init")) for a in calls} == {
        "sft": ("runs/chain/sft", "smollm2"), "rm": ("runs/chain/rm", "runs/chain/sft"),
        "dpo": ("runs/chain/dpo", "runs/chain/sft"), "grpo": ("runs/chain/grpo", "runs/chain/dpo")}
    assert (tmp_path / "runs" / "chain" / "report.md").is_file()
    assert not (tmp_path / "out").exists()
