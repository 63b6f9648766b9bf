"""Flag, config and file checks with clear messages (validate.py)."""
import argparse

import pytest
import torch

from minipost import validate
from minipost.checkpoint import CheckpointError
from minipost.config import GPTConfig, preset


def args(**kw):
    base = dict(stage="sft", steps=10, lr=1e-3, warmup=None, device="cpu", peft="none",
                lora_targets="q_proj,v_proj", save_every=0, threads=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("flag, value, message", [
    ("lr", -1.0, r"--lr must be greater than 0 \(the peak learning rate\), got -1.0"),
    ("lr", 0.0, r"--lr must be greater than 0"),
    ("lr", float("nan"), r"--lr must be a finite number"),
    ("save_every", -1, r"--save-every must be at least 0"),
    ("warmup", -5, r"--warmup must be at least 0 \(warmup steps\), got -5"),
    ("threads", 0, r"--threads must be at least 1"),
    ("max_len", 0, r"--max-len must be at least 1"),
    ("seq_len", 0, r"--seq-len must be at least 2"),
    ("lora_r", 0, r"--lora-r must be at least 1 \(the LoRA rank\)"),
    ("n_virtual", 0, r"--n-virtual must be at least 1"),
    ("bottleneck", 0, r"--bottleneck must be at least 1"),
    ("beta", -1.0, r"--beta must be at least 0 \(a KL strength\)"),
    ("lora_dropout", 1.0, r"--lora-dropout must be at least 0 and below 1"),
    ("label_smoothing", 0.7, r"--label-smoothing must be at least 0 and at most 0.5"),
    ("temperature", 0.0, r"--temperature must be greater than 0"),
    ("gamma", 1.5, r"--gamma must be at least 0 and at most 1"),
])
def test_out_of_range_flags_are_refused(flag, value, message):
    with pytest.raises(SystemExit, match="train.py: error: " + message):
        validate.validate_args(args(**{flag: value}))


def test_edges_are_accepted():
    # accepted = validate_args returns without raising (it returns nothing)
    assert validate.validate_args(args(save_every=0, warmup=0, threads=1, beta=0.0, lora_dropout=0.0, gamma=1.0,
                                label_smoothing=0.5, lr=1e-9, max_len=1, seq_len=2)) is None


def test_group_size_one_is_refused_for_group_methods_only():
    with pytest.raises(SystemExit, match=r"--group-size must be at least 2 .*a group of one has no baseline"):
        validate.validate_args(args(stage="grpo", group_size=1))
    validate.validate_args(args(stage="ppo", group_size=1))


def test_every_table_entry_is_enforced_at_its_bound():
    for flag, (lo, lo_ok, hi, _) in validate.RANGES.items():
        below = lo - 1 if lo_ok else lo
        with pytest.raises(SystemExit, match="--" + flag.replace("_", "-")):
            validate.validate_args(args(**{flag: below}))
        if hi is not None:
            with pytest.raises(SystemExit):
                validate.validate_args(args(**{flag: hi + 1}))


def test_devices():
    validate.check_device("cpu")
    with pytest.raises(SystemExit, match=r"--device 'gpu0' is not a device"):
        validate.check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=r"--device cuda: no CUDA GPU is available"):
            validate.validate_args(args(device="cuda"))
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        with pytest.raises(SystemExit, match=r"--device mps: Apple's MPS backend is not available"):
            validate.check_device("mps")


def test_lora_targets():
    validate.validate_args(args(peft="lora", lora_targets="q_proj,down_proj"))
    with pytest.raises(SystemExit, match=r"--lora-targets 'q_proj,attn': unknown module name\(s\) \['attn'\]"):
        validate.validate_args(args(peft="lora", lora_targets="q_proj,attn"))
    with pytest.raises(SystemExit, match=r"names a module twice"):
        validate.validate_args(args(peft="qlora", lora_targets="q_proj,q_proj"))
    validate.validate_args(args(peft="none", lora_targets="bogus"))  # not used without LoRA


def test_seq_len_beyond_the_models_context():
    cfg = preset("tiny", vocab_size=97)
    validate.check_against_model(argparse.Namespace(seq_len=256, max_len=None), cfg)
    with pytest.raises(SystemExit, match=r"--seq-len 300 is longer than the model's context \(max_seq_len 256\)"):
        validate.check_against_model(argparse.Namespace(seq_len=300), cfg)


@pytest.mark.parametrize("change, message", [
    ({"n_layer": "two"}, r"n_layer must be a positive integer, got 'two'"),
    ({"n_head": 0}, r"n_head must be a positive integer, got 0"),
    ({"d_model": True}, r"d_model must be a positive integer, got True"),
    ({"n_kv_head": 3}, r"n_head 4 is not divisible by n_kv_head 3"),
    ({"n_head": 3}, r"d_model 64 is not divisible by n_head 3"),
    ({"norm_eps": -1}, r"norm_eps must be a positive number"),
    ({"tie_embeddings": "yes"}, r"tie_embeddings must be true or false"),
    ({"colour": 1}, r"unknown keys \['colour'\]"),
])
def test_bad_config_dicts(change, message):
    d = {**preset("tiny", vocab_size=97).to_dict(), **change}
    with pytest.raises(CheckpointError, match=r"run/config.json: model config: " + message):
        validate.validate_config_dict(d, "run/config.json")


def test_good_config_dicts_build():
    for name in ("tiny", "small", "base"):
        d = preset(name, vocab_size=3072).to_dict()
        validate.validate_config_dict(d, "x")
        assert GPTConfig.from_dict(d).to_dict() == d
    validate.validate_config_dict({"vocab_size": 10, "n_layer": 1, "n_head": 2, "d_model": 8}, "x")


def test_load_model_uses_the_config_check(tmp_path):
    from minipost import checkpoint
    from minipost.model import GPT

    checkpoint.save_model(GPT(preset("tiny", vocab_size=97)), tmp_path, stage="t")
    info = checkpoint.read_json(tmp_path / "config.json")
    info["model"]["n_layer"] = "two"
    checkpoint.write_json(info, tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"config.json: model config: n_layer must be a positive integer"):
        checkpoint.load_model(tmp_path)


def test_garbage_tokenizer(tmp_path, small_tokenizer):
    assert validate.load_tokenizer_checked(small_tokenizer.path).vocab_size == small_tokenizer.vocab_size
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match=r"tokenizer.model: not a minipost SentencePiece tokenizer model"):
        validate.load_tokenizer_checked(bad)
    with pytest.raises(CheckpointError, match=r"file not found"):
        validate.load_tokenizer_checked(tmp_path / "missing.model")


def test_data_checks():
    validate.check_prompts_fit([10, 20], 64, 256, "rl.jsonl")
    with pytest.raises(SystemExit, match=r"rl.jsonl: 1 prompt\(s\) \(records \[2\]\) do not fit .*longest prompt "
                                         r"10240 tokens"):
        validate.check_prompts_fit([10, 10240], 64, 256, "rl.jsonl")
    validate.check_pairs_differ([{"chosen": "a", "rejected": "b"}], "p.jsonl")
    with pytest.raises(SystemExit, match=r"p.jsonl: records \[2\] have chosen == rejected \(1 of 2\)"):
        validate.check_pairs_differ([{"chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "c"}], "p.jsonl")
    validate.check_corpus_size(300, 256, "c.jsonl")
    with pytest.raises(SystemExit, match=r"c.jsonl: the corpus has 40 tokens, fewer than one training row"):
        validate.check_corpus_size(40, 256, "c.jsonl")
