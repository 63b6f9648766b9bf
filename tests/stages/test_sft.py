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
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # common.finish draws the curves
    unit = checkpoint.checkpoint_dir(out)  # the final save is a checkpoint unit like every other
    assert checkpoint.verify_checkpoint(unit) == 2
    if peft == "none":
        assert (unit / "model.safetensors").is_file() and not (unit / "adapter.safetensors").exists()
        assert ev["trainable_params"] == ev["total_params"]
    else:
        # A PEFT run writes only what it trained: no base weight in the adapter file.
        keys = set(load_file(unit / "adapter.safetensors"))
        base_keys = set(load_file(base_dir / "model.safetensors"))
        assert keys and not keys & base_keys
        assert not (unit / "model.safetensors").exists()
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
    assert set(load_file(checkpoint.checkpoint_dir(out) / "adapter.safetensors")) == {"head.weight", "head.bias"}
    assert ev["trainable_params"] == 5 * 64 + 5


def test_probe_moves_its_batches_to_the_device(base_dir, tmp_path, monkeypatch):
    """Every tensor the probe sees in training and evaluation came out of .to(args.device):
    on a GPU run, batches left on the CPU would fail (or silently run elsewhere)."""
    from minipost.peft.probe import LinearProbe

    moved, seen = [], []
    real_to, real_forward = torch.Tensor.to, LinearProbe.forward

    def to(self, *a, **kw):
        out = real_to(self, *a, **kw)
        if a and a[0] == "cpu":  # the stage's args.device
            moved.append(out)
        return out

    def forward(self, input_ids, attention_mask=None):
        seen.append(any(input_ids is m for m in moved) and any(attention_mask is m for m in moved))
        return real_forward(self, input_ids, attention_mask)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(LinearProbe, "forward", forward)
    cli.run(["--stage", "probe", "--init", str(base_dir), "--out", str(tmp_path / "probe"), "--steps", "2",
             "--batch-size", "8", "--log-every", "1", "--device", "cpu"])
    assert len(seen) > 2 and all(seen)


def test_batch_4_times_accumulation_2_equals_batch_8(base_dir, tmp_path):
    """One optimizer step of SFT with 2 micro-batches of 4 rows gives the weights of one
    batch of 8 rows: the same 8 rows (the epoch order does not depend on the batch size)
    and every trained token weighted alike (training.ItemWeighted)."""
    common = ["--stage", "sft", "--init", str(base_dir), "--preset", "tiny", "--steps", "1", "--max-eval", "1",
              "--lr", "1e-3", "--warmup", "0"]
    cli.run([*common, "--out", str(tmp_path / "b8"), "--batch-size", "8"])
    cli.run([*common, "--out", str(tmp_path / "b4x2"), "--batch-size", "4", "--grad-accum", "2"])
    # Adam's first step moves a weight by about lr * g / (|g| + eps): for a gradient within
    # float rounding of zero that rounding becomes a change of a fraction of lr (see
    # test_distributed.assert_same_training), hence lr / 50; the logged loss (the token mean
    # before the step) and the gradients themselves (test below) are compared tightly.
    w8, w4, w0 = (load_file(checkpoint.checkpoint_dir(d) / "model.safetensors")
                  for d in (tmp_path / "b8", tmp_path / "b4x2", base_dir))
    assert max((w8[k] - w4[k]).abs().max().item() for k in w8) <= 1e-3 / 50
    assert max((w8[k] - w0[k]).abs().max().item() for k in w8) > 5e-4  # the step moved the weights (~lr)
    m8, m4 = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("b8", "b4x2"))
    # metrics.jsonl keeps 6 decimals (training.py), so two losses equal to 1e-9 can land one unit
    # of the last place apart when they straddle a rounding boundary (seen: 8.326954 / 8.326953)
    assert m8["loss"] == pytest.approx(m4["loss"], abs=1e-6 * 1.001)


def test_accumulated_gradient_equals_the_full_batch_gradient(small_tokenizer):
    """The SFT loss over 8 packed rows of uneven trained-token counts: 2 micro-batches of 4
    through ItemWeighted give the full-batch gradient (the mean over all trained tokens),
    which the mean of the two micro-batch means does not."""
    from minipost.logprobs import scored_logits
    from minipost.losses import sft_loss
    from minipost.stages.sft import trained_nll_sum
    from minipost.training import ItemWeighted

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size))
    ids = torch.randint(5, small_tokenizer.vocab_size, (8, 24))
    targets = ids.roll(-1, 1)
    for row in range(8):  # row r trains its last 3 + 2r positions: uneven token counts
        targets[row, : 24 - (3 + 2 * row)] = -100
    batch = {"input_ids": ids, "targets": targets, "doc_ids": torch.zeros_like(ids),
             "position_ids": torch.arange(24).expand(8, 24)}

    def grads(fn):
        model.zero_grad()
        fn()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def loss_sum(rows):
        return trained_nll_sum(model, {k: v[rows] for k, v in batch.items()})[0], {}  # the stage's loss

    # the reference: the plain logits path over the whole batch
    full = grads(lambda: sft_loss(*scored_logits(model, ids, targets, doc_ids=batch["doc_ids"],
                                                 position_ids=batch["position_ids"])).backward())
    halves = [slice(0, 4), slice(4, 8)]

    def accumulated():
        acc = ItemWeighted([(targets[r] != -100).sum().item() for r in halves])
        for r in halves:
            acc.backward(*loss_sum(r))
    assert torch.allclose(grads(accumulated), full, rtol=1e-4, atol=1e-7)

    def mean_of_means():
        for r in halves:
            (loss_sum(r)[0] / (targets[r] != -100).sum() / 2).backward()
    assert not torch.allclose(grads(mean_of_means), full, rtol=1e-2, atol=1e-5)
