"""The SFT and probe stages end to end on the tiny preset, with every PEFT method."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from minipost import checkpoint, cli
from minipost.config import preset
from minipost.model import GPT

TINY = ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--max-eval", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, small_tokenizer):
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), d, stage="pretrain")
    shutil.copyfile(small_tokenizer.path, d / "tokenizer.model")
    return d


@pytest.mark.parametrize("peft", ["none", "lora", "qlora", "prefix", "prompt", "adapter"])
def test_sft_runs_with_every_peft_method(base_dir, tmp_path, peft):
    out = tmp_path / "sft"
    ev = cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(out), "--peft", peft, *TINY])
    for key in ("val_loss", "format_rate", "fact_accuracy", "format_rate_before", "fact_accuracy_before"):
        assert key in ev
    assert 0 < ev["val_loss"] < 20
    assert all(0 <= ev[k] <= 1 for k in ("format_rate", "fact_accuracy", "voice_rate"))
    assert json.loads((out / "eval.json").read_text()) == ev
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    if peft == "none":
        assert (out / "model.safetensors").is_file() and not (out / "adapter.safetensors").exists()
        assert ev["trainable_params"] == ev["total_params"]
    else:
        # A PEFT run writes only what it trained: no base weight in the adapter file.
        keys = set(load_file(out / "adapter.safetensors"))
        base_keys = set(load_file(base_dir / "model.safetensors"))
        assert keys and not keys & base_keys
        assert not (out / "model.safetensors").exists()
        assert ev["trainable_params"] < ev["total_params"]


def test_lora_sft_output_is_a_start_for_the_next_stage(base_dir, tmp_path):
    """A LoRA checkpoint loads onto its base with the same logits, merged for the next stage."""
    from minipost import peft
    from minipost.stages.common import load_stage_model

    out = tmp_path / "sft"
    cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(out), "--peft", "lora", *TINY])
    x = torch.randint(0, 100, (2, 12))
    base, _ = checkpoint.load_model(base_dir)
    with_adapter = peft.load_adapter(base, out)
    merged, _, _ = load_stage_model(out)
    with torch.no_grad():
        assert (with_adapter(x) - merged(x)).abs().max().item() <= 1e-5
    assert not any("lora" in n for n in merged.state_dict())


@pytest.mark.parametrize("packing,mask", [("off", "template"), ("on", "none")])
def test_sft_mask_and_packing_flags(base_dir, tmp_path, packing, mask):
    ev = cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(tmp_path / "s"), "--packing", packing,
                  "--mask", mask, *TINY])
    assert 0 < ev["val_loss"] < 20


def test_probe_stage_trains_only_the_head(base_dir, tmp_path):
    out = tmp_path / "probe"
    ev = cli.run(["--stage", "probe", "--init", str(base_dir), "--out", str(out), "--steps", "3",
                  "--batch-size", "8", "--log-every", "1"])
    assert 0 <= ev["probe_accuracy"] <= 1 and 0 < ev["majority_baseline"] <= 1
    assert set(load_file(out / "adapter.safetensors")) == {"head.weight", "head.bias"}
    assert ev["trainable_params"] == 5 * 64 + 5
