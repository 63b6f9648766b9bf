"""train.py's command line explains itself: the stage list, help on every flag, warmup checks."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from minipost import cli

REPO = Path(__file__).resolve().parent.parent


def test_help_without_a_stage_lists_every_stage():
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for stage in cli.STAGES:
        assert any(line.split()[:1] == [stage] and len(line.split()) > 2 for line in lines), stage


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_every_flag_has_help_and_shows_its_default(stage):
    parser = cli.build_parser(stage)
    assert isinstance(parser.formatter_class, type)
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{stage}: {action.option_strings} has no help"
    text = parser.format_help()
    assert "(default: 1234)" in text  # --seed, as every flag with a default


def args_for(stage, *extra):
    return cli.parse(["--stage", stage, "--out", "/tmp/unused-out", *extra])


def test_default_warmup_is_capped_at_a_tenth_of_the_steps(capsys):
    assert args_for("sft", "--steps", "50").warmup == 5  # sft's default 20 > 50 // 10
    assert "capped" in capsys.readouterr().err
    assert args_for("sft").warmup == 20  # the default run keeps its default
    assert args_for("sft", "--steps", "50", "--warmup", "30").warmup == 30  # the user's choice stays


def test_explicit_warmup_longer_than_the_run_is_an_error():
    with pytest.raises(SystemExit, match="longer than the run"):
        args_for("dpo", "--steps", "5", "--warmup", "6")
    with pytest.raises(SystemExit, match="longer than the run"):
        args_for("dpo", "--steps=5", "--warmup=6")


@pytest.mark.parametrize("cores,threads,expected", [
    (2, None, 1),      # a 2-core machine: one thread
    (8, None, None),   # more cores: torch's choice
    (2, 3, 3),         # --threads always wins
])
def test_set_threads_rule(monkeypatch, cores, threads, expected):
    import os

    import torch

    calls = []
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    cli.set_threads(threads)
    assert calls == ([] if expected is None else [expected])


def test_run_applies_the_thread_rule(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "set_threads", seen.append)
    from minipost.stages import sft

    monkeypatch.setattr(sft, "run", lambda args: {"ok": 1})  # only the thread rule is under test
    assert cli.run(["--stage", "sft", "--init", "smollm2", "--out", str(tmp_path / "o"), "--threads", "2"]) == {"ok": 1}
    assert seen == [2]


@pytest.mark.parametrize("native,precision,warned", [
    (False, "bf16", True),   # emulated bf16: tens of times slower than float32, so the run says so
    (True, "bf16", False),
    (False, "auto", False),  # auto already runs float32 there
])
def test_bf16_without_native_support_warns(monkeypatch, tmp_path, capsys, native, precision, warned):
    from minipost import backend
    from minipost.stages import sft

    monkeypatch.setattr(cli, "set_threads", lambda threads: None)
    monkeypatch.setattr(backend, "bf16_supported", lambda device="cpu": native)
    monkeypatch.setattr(sft, "run", lambda args: {"ok": 1})
    assert cli.run(["--stage", "sft", "--init", "smollm2", "--out", str(tmp_path / "o"),
                    "--precision", precision]) == {"ok": 1}
    backend.set_precision("fp32")
    assert (backend.EMULATED_BF16 in capsys.readouterr().err) == warned
