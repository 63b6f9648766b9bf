"""disable_adapters, save/load of adapters, apply_peft dispatch and parameter counts (peft/__init__.py)."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from minipost.checkpoint import CheckpointError, load_tensors
from minipost.config import preset
from minipost.model import GPT
from minipost.peft import (
    adapter_tensors, apply_lora, apply_peft, apply_prompt, disable_adapters, load_adapter, merge_lora,
    peft_config, save_adapter, trainable_parameters, unmerge_lora,
)
from minipost.peft.lora import LoRALinear
from minipost.peft.nf4 import dequantize_nf4, quantize_nf4
from minipost.peft.probe import LinearProbe

VOCAB = 97
# (method, settings): every method, with settings that make its tensors easy to tell apart.
CASES = [
    ("lora", dict(r=4, alpha=8)),
    ("lora", dict(r=2, alpha=4, rslora=True, targets=("q_proj", "down_proj"), dropout=0.1)),
    ("qlora", dict(r=4, alpha=8)),
    ("qlora", dict(r=2, alpha=8, double_quant=True)),
    ("prefix", dict(n_virtual=3)),
    ("prefix", dict(n_virtual=3, projection=True, hidden=16)),
    ("prompt", dict(n_virtual=4)),
    ("adapter", dict(bottleneck=8)),
    ("probe", dict(n_classes=3, pooling="last")),
]
IDS = [f"{m}-{i}" for i, (m, _) in enumerate(CASES)]


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=VOCAB, **kw)).eval()


def train_steps(model, steps=3, seed=0):
    """A few Adam steps so that every method's tensors move away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 10), generator=g)
        if isinstance(model, LinearProbe):
            loss = F.cross_entropy(model(ids), torch.tensor([0, 2]))
        else:
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def lm_logits(model, ids):
    gpt = model.model if isinstance(model, LinearProbe) else model
    return gpt(ids)


def quantized_copy(base, double_quant=False):
    """The NF4 base a QLoRA model is built on: each targeted weight replaced by dequant(quant(W))."""
    dq = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in dq.named_parameters():
            if name.split(".")[-2].endswith("_proj"):
                p.copy_(dequantize_nf4(quantize_nf4(p, double_quant=double_quant)))
    return dq


@pytest.mark.parametrize("method,settings", CASES, ids=IDS)
def test_disable_adapters_gives_exactly_the_base_model(method, settings):
    base = tiny()
    model = train_steps(apply_peft(copy.deepcopy(base), method, **settings))
    # QLoRA's base model is the NF4-quantized one.
    reference = quantized_copy(base, settings.get("double_quant", False)) if method == "qlora" else base
    ids = torch.randint(0, VOCAB, (2, 12))
    adapted = lm_logits(model, ids)
    if method != "probe":  # the probe leaves the GPT itself untouched
        assert not torch.allclose(adapted, reference(ids), atol=1e-6)
    with torch.no_grad(), disable_adapters(model):
        assert torch.equal(lm_logits(model, ids), reference(ids))
    assert torch.equal(lm_logits(model, ids), adapted)  # restored on exit


def test_disable_adapters_refuses_merged_lora():
    model = train_steps(apply_peft(tiny(), "lora", r=4))
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        with disable_adapters(model):
            pass
    unmerge_lora(model)
    with disable_adapters(model):
        assert all(m.disabled for m in model.modules() if isinstance(m, LoRALinear))
    assert not any(m.disabled for m in model.modules() if isinstance(m, LoRALinear))


@pytest.mark.parametrize("method,settings", CASES, ids=IDS)
def test_save_load_round_trip_is_exact(method, settings, tmp_path):
    model = train_steps(apply_peft(tiny(), method, **settings))
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny(), tmp_path)  # a fresh base: the method is applied from adapter.json
    ids = torch.randint(0, VOCAB, (2, 12))
    if method == "probe":
        assert isinstance(loaded, LinearProbe) and torch.equal(loaded(ids), model(ids))
    else:
        assert torch.equal(loaded(ids), model(ids))
    assert peft_config(loaded) == peft_config(model)

    # Only the method's tensors are in the file: none of the base model's.
    keys = set(load_tensors(tmp_path / "adapter.safetensors"))
    assert keys == set(adapter_tensors(model)) and keys
    base_names = set(tiny().state_dict())
    assert not keys & base_names and not any(".base." in k or k.startswith("model.") for k in keys)
    expected_kind = {"lora": "lora_", "qlora": "lora_", "prefix": "prefix", "prompt": "prompt.weight",
                     "adapter": "_proj.", "probe": "head."}[method]
    assert all(expected_kind in k for k in keys)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["method"] == method and meta["base_model"] == tiny().cfg.to_dict()
    for k, v in settings.items():
        assert meta["settings"][k] == (list(v) if isinstance(v, tuple) else v)


def test_loading_onto_another_shape_is_a_clear_error(tmp_path):
    save_adapter(apply_peft(tiny(), "lora", r=4), tmp_path)
    other = tiny(d_model=32)
    with pytest.raises(CheckpointError, match=r"d_model: adapter has 64, model has 32"):
        load_adapter(other, tmp_path)
    assert peft_config(other) is None  # nothing applied on failure
    with pytest.raises(CheckpointError, match="n_layer"):
        load_adapter(tiny(n_layer=3), tmp_path)
    with pytest.raises(CheckpointError, match=r"r: adapter has 4, model has 8"):
        load_adapter(apply_peft(tiny(), "lora", r=8), tmp_path)
    with pytest.raises(CheckpointError, match="method"):
        load_adapter(apply_peft(tiny(), "adapter"), tmp_path)


def test_loading_checks_tensor_names_and_shapes(tmp_path):
    model = apply_peft(tiny(), "adapter", bottleneck=4)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    meta["settings"]["bottleneck"] = 6  # the json now disagrees with the tensors
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"down\.(weight|bias) has shape \(4.*\) in the file, \(6.*\) in the model"):
        load_adapter(tiny(), tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(tiny(), tmp_path / "missing")


def test_apply_peft_dispatch_and_errors():
    model = tiny()
    assert apply_peft(model, "none") is model and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown PEFT method"):
        apply_peft(tiny(), "ia3")
    with pytest.raises(ValueError, match="unknown settings"):
        apply_peft(tiny(), "prefix", r=4)
    with pytest.raises(ValueError, match="already has 'lora'"):
        apply_peft(apply_peft(tiny(), "lora"), "adapter")
    with pytest.raises(ValueError, match="nf4"):
        apply_peft(tiny(), "qlora", quantize=None)
    with pytest.raises(ValueError, match="no PEFT method"):
        save_adapter(tiny(), "unused")


def test_trainable_parameters_counts_tied_weights_once():
    model = tiny()
    n = model.num_parameters()
    unique = {id(p): p.numel() for p in model.parameters()}
    assert n == sum(unique.values()) and model.lm_head.weight is model.tok_emb.weight
    assert trainable_parameters(model) == (n, n)
    cfg = model.cfg
    r, kv = 8, cfg.n_kv_head * cfg.head_dim
    per_layer = r * ((64 + 64) * 2 + (64 + kv) * 2 + (64 + cfg.d_ff) * 3)  # q,o / k,v / gate,up,down
    for method in ("lora", "qlora"):
        m = apply_peft(tiny(), method, r=r)
        assert trainable_parameters(m) == (cfg.n_layer * per_layer, n + cfg.n_layer * per_layer)


def test_peft_config_is_the_record_made_when_the_method_was_applied():
    assert peft_config(tiny()) is None
    # Applied directly (not through apply_peft), a method is still recorded and saved.
    model = apply_lora(tiny(), r=2, alpha=3, targets=("v_proj", "q_proj"), quantize="nf4")
    assert peft_config(model) == {"method": "qlora", "r": 2, "alpha": 3, "targets": ["q_proj", "v_proj"],
                                  "dropout": 0.0, "rslora": False, "quantize": "nf4", "double_quant": False}
    assert peft_config(apply_peft(tiny(), "prefix", n_virtual=5, projection=True)) == {
        "method": "prefix", "n_virtual": 5, "projection": True, "hidden": 64}
    assert peft_config(apply_peft(tiny(), "probe", n_classes=4)) == {"method": "probe", "n_classes": 4, "pooling": "mean"}
    with pytest.raises(ValueError, match="more than one"):
        peft_config(apply_prompt(apply_lora(tiny()), n_virtual=2))


def test_the_record_keeps_settings_the_modules_do_not_show(tmp_path):
    from minipost.peft import merge_and_unwrap

    # prompt tuning's init and LoRA's dropout leave no trace in module shapes
    assert peft_config(apply_peft(tiny(), "prompt", n_virtual=3, init="vocab")) == {
        "method": "prompt", "n_virtual": 3, "init": "vocab"}
    lora = apply_peft(tiny(), "lora", r=2, dropout=0.1)
    assert peft_config(lora)["dropout"] == 0.1
    assert peft_config(copy.deepcopy(lora)) == peft_config(lora)
    assert peft_config(merge_and_unwrap(lora)) is None  # a plain GPT again
    assert not any(isinstance(m, LoRALinear) for m in lora.modules())


def test_an_adapter_json_without_later_settings_still_loads(tmp_path):
    # adapter.json written before the prompt init was recorded: {"n_virtual"} only
    model = apply_peft(tiny(), "prompt", n_virtual=3)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert set(meta) == {"method", "settings", "base_model"} and meta["settings"] == {"n_virtual": 3, "init": "random"}
    meta["settings"] = {"n_virtual": 3}
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    for target in (tiny(), apply_peft(tiny(), "prompt", n_virtual=3)):  # fresh, and with the method applied
        loaded = load_adapter(target, tmp_path)
        assert torch.equal(loaded.prompt.weight, model.prompt.weight)
