"""Checkpoint units: one step's files become current together, carry their step, and
replace every file of the previous unit (checkpoint.py)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from minipost import checkpoint
from minipost.checkpoint import CheckpointError
from minipost.config import preset
from minipost.guards import NonFiniteError
from minipost.model import GPT


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=97))


def optimizer_after_one_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 97, (2, 8))).sum().backward()
    opt.step()
    return opt


def save_full(model, out, step, optimizer=None, **info):
    return checkpoint.save_checkpoint(out, step, {"model.safetensors": checkpoint.model_tensors(model)},
                                      {"config.json": {"model": model.cfg.to_dict(), "stage": "sft", **info}},
                                      optimizer=optimizer)


def test_unit_round_trip_and_pointer(tmp_path):
    m = tiny()
    opt = optimizer_after_one_step(m)
    unit = save_full(m, tmp_path, 20, opt)
    assert unit == tmp_path / "step-000020"
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == {"current": "step-000020", "checkpoint_step": 20}
    assert checkpoint.current_checkpoint(tmp_path) == unit
    assert checkpoint.verify_checkpoint(unit) == 20
    assert checkpoint.tensor_file_step(unit / "model.safetensors") == 20
    assert checkpoint.tensor_file_step(unit / "state.safetensors") == 20
    loaded, info = checkpoint.load_model(tmp_path)  # the run directory resolves to its unit
    assert info["stage"] == "sft" and info["checkpoint_step"] == 20
    for a, b in zip(m.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=5.0)
    assert checkpoint.load_train_state(tmp_path, opt2) == {"step": 20}
    for k, slots in opt.state_dict()["state"].items():
        for name, v in slots.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][k][name]))


def test_new_unit_replaces_the_old_one(tmp_path):
    save_full(tiny(0), tmp_path, 10)
    save_full(tiny(1), tmp_path, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000020"]
    assert torch.equal(checkpoint.load_model(tmp_path)[0].tok_emb.weight, tiny(1).tok_emb.weight)


def test_same_step_saved_twice_gets_its_own_unit(tmp_path):
    save_full(tiny(0), tmp_path, 20)
    unit = save_full(tiny(1), tmp_path, 20)  # e.g. Ctrl-C right after a --save-every save
    assert unit.name == "step-000020.1" and checkpoint.current_checkpoint(tmp_path) == unit
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["step-000020.1"]
    assert torch.equal(checkpoint.load_model(tmp_path)[0].tok_emb.weight, tiny(1).tok_emb.weight)


def test_lora_run_into_a_full_run_leaves_no_stale_model(tmp_path):
    """Issue #16.1: the old single-directory full run's model.safetensors must not survive."""
    m = tiny()
    checkpoint.save_model(m, tmp_path, stage="sft", peft="none")
    checkpoint.save_train_state(tmp_path, optimizer_after_one_step(m), {"step": 5})
    adapter = {"layers.0.attn.q_proj.lora_A": torch.randn(8, 64)}
    checkpoint.save_checkpoint(tmp_path, 3, {"adapter.safetensors": adapter},
                               {"adapter.json": {"method": "lora"}, "config.json": {"stage": "sft", "peft": "lora"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000003"]
    unit = checkpoint.current_checkpoint(tmp_path)
    assert sorted(p.name for p in unit.iterdir()) == ["adapter.json", "adapter.safetensors", "config.json",
                                                      "manifest.json"]


def test_legacy_directory_still_loads(tmp_path):
    m = tiny()
    checkpoint.save_model(m, tmp_path, stage="pretrain")
    assert checkpoint.current_checkpoint(tmp_path) == tmp_path
    assert checkpoint.verify_checkpoint(tmp_path) is None
    assert torch.equal(checkpoint.load_model(tmp_path)[0].norm.weight, m.norm.weight)
    assert checkpoint.current_checkpoint(tmp_path / "nothing") is None


def test_legacy_directory_with_model_and_adapter_is_refused(tmp_path):
    checkpoint.save_model(tiny(), tmp_path, stage="sft", peft="lora")
    checkpoint.save_tensors({"x": torch.zeros(1)}, tmp_path / "adapter.safetensors")
    with pytest.raises(CheckpointError, match=r"both model.safetensors and adapter.safetensors.*peft='lora', "
                                              r"so model.safetensors is stale"):
        checkpoint.current_checkpoint(tmp_path)


def test_a_file_of_another_step_is_refused(tmp_path):
    save_full(tiny(0), tmp_path, 10)
    other = save_full(tiny(1), tmp_path / "other", 20)
    unit = checkpoint.current_checkpoint(tmp_path)
    # same size (same shapes, same metadata length), another step: only the step tells them apart
    (unit / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"model.safetensors: belongs to step 20, but the checkpoint is step 10"):
        checkpoint.load_model(tmp_path)


def test_a_json_file_of_another_step_is_refused(tmp_path):
    unit = save_full(tiny(0), tmp_path, 10, optimizer_after_one_step(tiny(0)))
    meta = json.loads((unit / "state.json").read_text())
    text = json.dumps({**meta, "checkpoint_step": 11}, indent=2, sort_keys=True) + "\n"
    (unit / "state.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"state.json: belongs to step 11, but the checkpoint is step 10"):
        checkpoint.load_train_state(tmp_path, torch.optim.AdamW(tiny().parameters()))


def test_truncated_file_in_a_unit_is_refused(tmp_path):
    unit = save_full(tiny(), tmp_path, 10)
    path = unit / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"missing or of the wrong size.*incomplete"):
        checkpoint.load_model(tmp_path)


def test_pointer_to_a_missing_unit_is_a_clear_error(tmp_path):
    save_full(tiny(), tmp_path, 10)
    (tmp_path / "checkpoint.json").write_text(json.dumps({"current": "step-000099"}))
    with pytest.raises(CheckpointError, match=r"names 'step-000099', which is not a checkpoint directory"):
        checkpoint.current_checkpoint(tmp_path)


def test_nan_weights_are_never_saved(tmp_path):
    """Issue #16.2: a NaN weight stops the save before any file is written."""
    save_full(tiny(0), tmp_path, 10)
    m = tiny(1)
    with torch.no_grad():
        m.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model.safetensors tensor 'layers.1.mlp.up_proj.weight' "
                                             r"\(1 of \d+ elements\).* at step 20"):
        save_full(m, tmp_path, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000010"]
    assert checkpoint.verify_checkpoint(checkpoint.current_checkpoint(tmp_path)) == 10


def test_nan_optimizer_state_is_never_saved(tmp_path):
    m = tiny()
    opt = optimizer_after_one_step(m)
    next(iter(opt.state.values()))["exp_avg_sq"].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"state.safetensors tensor 'opt.0.exp_avg_sq'"):
        save_full(m, tmp_path, 4, opt)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_interrupted_unit_write_keeps_the_previous_unit(tmp_path, monkeypatch):
    save_full(tiny(0), tmp_path, 10)
    calls = []

    def fail_second(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return load_file.__globals__["save_file"](tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", fail_second)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 20, {"model.safetensors": checkpoint.model_tensors(tiny(1)),
                                                  "value_head.safetensors": {"proj.weight": torch.ones(1, 64)}}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000010"]
    assert torch.equal(checkpoint.load_model(tmp_path)[0].tok_emb.weight, tiny(0).tok_emb.weight)


def test_written_files_are_kept_as_is_and_checked_by_size(tmp_path):
    """write_files (a tokenizer's save) writes files save_checkpoint does not stamp: the manifest
    lists them as unstamped, verify accepts them without a step and refuses them cut short."""
    def tokenizer_save(directory):
        (directory / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
        (directory / "tokenizer.model").write_bytes(b"\x00" * 300)

    unit = checkpoint.save_checkpoint(tmp_path, 7, {"model.safetensors": checkpoint.model_tensors(tiny())}, {},
                                      write_files=tokenizer_save)
    manifest = json.loads((unit / "manifest.json").read_text())
    assert manifest["unstamped"] == ["tokenizer.json", "tokenizer.model"]
    assert manifest["files"]["tokenizer.model"] == 300
    assert json.loads((unit / "tokenizer.json").read_text()) == {"model": {"vocab": {"a": 0}}}  # no step added
    assert checkpoint.checkpoint_dir(tmp_path) == unit and checkpoint.verify_checkpoint(unit) == 7
    (unit / "tokenizer.model").write_bytes(b"\x00" * 299)
    with pytest.raises(CheckpointError, match=r"tokenizer.model: missing or of the wrong size .*300 bytes"):
        checkpoint.checkpoint_dir(tmp_path)


def test_checkpoint_dir_reads_both_layouts_and_names_an_empty_run(tmp_path):
    legacy = tmp_path / "legacy"
    checkpoint.save_model(tiny(), legacy, stage="sft")
    assert checkpoint.checkpoint_dir(legacy) == legacy  # the earlier single-directory layout
    units = tmp_path / "units"
    save_full(tiny(), units, 3)
    assert checkpoint.checkpoint_dir(units) == units / "step-000003"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no checkpoint \(neither checkpoint.json nor"):
        checkpoint.checkpoint_dir(tmp_path / "empty")
