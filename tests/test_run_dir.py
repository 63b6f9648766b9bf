"""--out protection, the writability probe and metrics.jsonl truncation (run_dir.py)."""
import json

import pytest
import torch

from minipost import checkpoint, run_dir


def make_run(d, stage="sft", peft="none", base=None, step=10, legacy=False):
    config = {"stage": stage, "peft": peft, "base": None if base is None else str(base)}
    if legacy:
        d.mkdir(parents=True, exist_ok=True)
        checkpoint.save_tensors({"w": torch.zeros(2)}, d / "model.safetensors")
        checkpoint.write_json(config, d / "config.json")
    else:
        checkpoint.save_checkpoint(d, step, {"model.safetensors": {"w": torch.zeros(2)}}, {"config.json": config})
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    return d


def refused(match, **kw):
    with pytest.raises(SystemExit, match=match):
        run_dir.check_out_dir(**kw)


def test_out_equal_to_init_is_refused_even_through_a_symlink(tmp_path):
    sft = make_run(tmp_path / "sft")
    (tmp_path / "link").symlink_to(sft)
    for out in (sft, tmp_path / "link", sft / "step-000010"):
        refused(r"is \(or contains, or lies inside\) the --init directory; training would overwrite its own input",
                out=out, init=sft, stage="sft", config={}, resume=False, overwrite=True)
    assert (sft / "step-000010" / "model.safetensors").is_file()
    refused(r"the --init directory", out=tmp_path / "missing", init=tmp_path / "missing", stage="sft",
            config={}, resume=False, overwrite=False)  # before the default chain builds --init


def test_out_that_is_the_base_of_the_init_run_is_refused(tmp_path):
    pretrain = make_run(tmp_path / "pretrain", stage="pretrain")
    lora = make_run(tmp_path / "sft-lora", peft="lora", base=pretrain)
    refused(r"pretrain, the base the --init run builds on", out=pretrain, init=lora, stage="pretrain",
            config={}, resume=False, overwrite=True)


def test_another_stage_is_refused_unless_overwrite(tmp_path):
    out = make_run(tmp_path / "run", stage="sft")
    refused(r"holds another run \(stage: the run has 'sft', this command 'dpo'\); pass --overwrite",
            out=out, init=None, stage="dpo", config={}, resume=False, overwrite=False)
    (out / "notes.txt").write_text("mine")
    run_dir.check_out_dir(out, None, "dpo", {}, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only minipost's files went


def test_another_configuration_is_refused(tmp_path):
    out = make_run(tmp_path / "run", peft="none", base=tmp_path / "pretrain")
    refused(r"peft: the run has 'none', this command 'lora'", out=out, init=None, stage="sft",
            config={"peft": "lora", "base": str(tmp_path / "pretrain")}, resume=False, overwrite=False)
    refused(r"base: the run has", out=out, init=None, stage="sft",
            config={"peft": "none", "base": str(tmp_path / "other")}, resume=False, overwrite=False)


def test_same_run_again_is_replaced_whole(tmp_path):
    out = make_run(tmp_path / "run", base=tmp_path / "pretrain")
    (out / "eval.json").write_text("{}")
    run_dir.check_out_dir(out, None, "sft", {"peft": "none", "base": str(tmp_path / "x" / ".." / "pretrain")},
                          resume=False, overwrite=False)
    assert list(out.iterdir()) == []


def test_resume_of_another_stage_or_nothing_is_refused(tmp_path):
    out = make_run(tmp_path / "sft")
    refused(r"--resume: .* holds another run \(stage: the run has 'sft', this command 'pretrain'\)",
            out=out, init=None, stage="pretrain", config={}, resume=True, overwrite=False)
    refused(r"--resume: .* holds no run", out=tmp_path / "new", init=None, stage="sft", config={},
            resume=True, overwrite=False)
    run_dir.check_out_dir(out, None, "sft", {"peft": "none"}, resume=True, overwrite=False)
    assert (out / "step-000010").is_dir()  # resuming keeps everything


def test_a_directory_that_is_not_a_run_is_never_emptied(tmp_path):
    hf = tmp_path / "hf-model"  # a Hugging Face model: config.json without a stage
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (hf / "model.safetensors").write_bytes(b"weights")
    for overwrite in (False, True):
        refused(r"does not look like a minipost run", out=hf, init=None, stage="sft", config={},
                resume=False, overwrite=overwrite)
    assert (hf / "model.safetensors").read_bytes() == b"weights"
    run_dir.check_out_dir(tmp_path / "fresh", None, "sft", {}, resume=False, overwrite=False)  # new: fine


def test_legacy_run_with_model_and_adapter_needs_overwrite(tmp_path):
    out = make_run(tmp_path / "run", legacy=True)
    checkpoint.save_tensors({"a": torch.zeros(1)}, out / "adapter.safetensors")
    refused(r"both model.safetensors and adapter.safetensors", out=out, init=None, stage="sft", config={},
            resume=False, overwrite=False)
    refused(r"--resume: .*both model.safetensors", out=out, init=None, stage="sft", config={},
            resume=True, overwrite=False)
    run_dir.check_out_dir(out, None, "sft", {}, resume=False, overwrite=True)
    assert list(out.iterdir()) == []


def test_check_writable(tmp_path):
    run_dir.check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*file/run is not writable \(Not a directory\)"):
        run_dir.check_writable(tmp_path / "file" / "run")


def test_check_writable_read_only(tmp_path, monkeypatch):
    import os

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(run_dir.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit, match=r"is not writable \(Read-only file system\)"):
        run_dir.check_writable(tmp_path)
    assert os.listdir(tmp_path) == []


def test_truncate_metrics_keeps_steps_up_to_the_resumed_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 16)]
    # a kill mid-write tore the last line
    path.write_text("\n".join(lines) + '\n{"step": 16, "lo')
    assert run_dir.truncate_metrics(path, 10) == 10
    assert path.read_text() == "".join(line + "\n" for line in lines[:10])
    # replaying steps 11.. appends them once
    with open(path, "a") as f:
        f.write(json.dumps({"step": 11}) + "\n")
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == list(range(1, 12))
    assert run_dir.truncate_metrics(tmp_path / "none.jsonl", 3) == 0
