"""`--stage merge` on tiny checkpoints written here: the saved model equals merging.py's result."""
import shutil

import pytest
import torch

from minipost import checkpoint, cli, merging
from minipost.config import preset
from minipost.model import GPT


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_tokenizer):
    """Three tiny full checkpoints with the same tokenizer: a base and two 'fine-tuned' runs."""
    root = tmp_path_factory.mktemp("merge")
    for seed, name in enumerate(("base", "a", "b")):
        torch.manual_seed(seed)
        checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), root / name, stage="sft")
        shutil.copyfile(small_tokenizer.path, root / name / "tokenizer.model")
    return root


def merge(monkeypatch, root, out, *flags):
    return cli.run(["--stage", "merge", "--init", str(root / "a"), "--with", str(root / "b"),
                    "--out", str(root / out), *flags])


def weights(path):
    return checkpoint.load_tensors(checkpoint.checkpoint_dir(path) / "model.safetensors")  # either layout


@pytest.mark.parametrize("flags,expected", [
    (("--method", "linear", "--weights", "0.3", "0.7"),
     lambda base, a, b: merging.linear_merge([a, b], [0.3, 0.7])),
    (("--method", "linear", "--base", "BASE", "--weights", "0.6", "0.1"),
     lambda base, a, b: merging.linear_merge([base, a, b], [1.0 - 0.7, 0.6, 0.1])),
    (("--method", "task-arithmetic", "--base", "BASE", "--weights", "1.0", "0.5", "--scale", "0.8"),
     lambda base, a, b: merging.task_arithmetic(base, [a, b], [1.0, 0.5], 0.8)),
    (("--method", "ties", "--base", "BASE", "--density", "0.3", "--scale", "1.2"),
     lambda base, a, b: merging.ties_merge(base, [a, b], None, 0.3, 1.2)),
])
def test_merge_stage_saves_the_pure_functions_result(monkeypatch, runs, flags, expected):
    flags = [str(runs / "base") if f == "BASE" else f for f in flags]
    result = merge(monkeypatch, runs, f"out-{flags[1]}-{len(flags)}", *flags)
    out = runs / f"out-{flags[1]}-{len(flags)}"
    want = expected(*(weights(runs / n) for n in ("base", "a", "b")))
    got = weights(out)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    unit = checkpoint.checkpoint_dir(out)  # the merge is saved as a checkpoint unit, like a training run
    assert (unit / "tokenizer.model").read_bytes() == (runs / "a" / "tokenizer.model").read_bytes()
    info = checkpoint.read_json(unit / "config.json")
    assert info["stage"] == "merge" and info["merge"]["method"] == flags[1]
    # The output is an ordinary checkpoint: it loads, and its forward uses the merged weights.
    model, _ = checkpoint.load_model(out)
    assert torch.equal(model.tok_emb.weight, want["tok_emb.weight"])
    distance = sum(float((want[k].double() - weights(runs / "a")[k].double()).pow(2).sum()) for k in want) ** 0.5
    assert result["models_merged"] == 2 and result["distance_from_init"] == pytest.approx(distance, rel=1e-12)


def test_merge_stage_refuses_a_different_tokenizer_and_a_missing_base(monkeypatch, runs, tmp_path):
    with pytest.raises(SystemExit, match="needs --base"):
        merge(monkeypatch, runs, "bad1", "--method", "ties")
    other = tmp_path / "other"
    shutil.copytree(runs / "b", other)
    (other / "tokenizer.model").write_bytes(b"not the same")
    with pytest.raises(SystemExit, match="different tokenizer.model"):
        cli.run(["--stage", "merge", "--init", str(runs / "a"), "--with", str(other), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--weights has 1 values for 2 runs"):
        merge(monkeypatch, runs, "bad2", "--weights", "1.0")


def test_a_lora_run_enters_with_its_adapter_folded_in(monkeypatch, runs):
    """--init a LoRA run on top of `a`: its weights are W + (alpha / r) * B @ A, written out here."""
    from minipost import peft

    model, _ = checkpoint.load_model(runs / "a")
    peft.apply_lora(model, r=2, alpha=4, targets=("q_proj", "down_proj"))
    torch.manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, peft.LoRALinear):
                module.lora_B.normal_()
    lora_dir = runs / "lora"
    peft.save_adapter(model, lora_dir)
    checkpoint.write_json({"model": model.cfg.to_dict(), "stage": "sft", "peft": "lora", "base": str(runs / "a")},
                          lora_dir / "config.json")
    shutil.copyfile(runs / "a" / "tokenizer.model", lora_dir / "tokenizer.model")

    folded = weights(runs / "a")
    for name, module in model.named_modules():
        if isinstance(module, peft.LoRALinear):
            folded[f"{name}.weight"] = (module.base.weight + 2.0 * module.lora_B @ module.lora_A).detach()
    cli.run(["--stage", "merge", "--init", str(lora_dir), "--with", str(runs / "b"), "--weights", "0.5", "0.5",
             "--out", str(runs / "out-lora")])
    want = merging.linear_merge([folded, weights(runs / "b")], [0.5, 0.5])
    got = weights(runs / "out-lora")
    assert sorted(got) == sorted(want)
    assert all(torch.allclose(got[k], want[k], atol=1e-6, rtol=0) for k in want)
    assert not torch.allclose(got["layers.0.attn.q_proj.weight"],
                              merging.linear_merge([weights(runs / "a"), weights(runs / "b")], [0.5, 0.5])[
                                  "layers.0.attn.q_proj.weight"])
