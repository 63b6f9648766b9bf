"""Saving and loading what a PEFT method trained: adapter.safetensors + adapter.json.

adapter.json: {"method": ..., "settings": {...}, "base_model": GPTConfig fields}; the
settings are those recorded when the method was applied (settings.py).
adapter.safetensors: the method's trained tensors only, by their names in the model
(`layers.0.attn.q_proj.lora_A`, `prompt.weight`, `head.weight`, ...), never base weights.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from minipost.checkpoint import CheckpointError, current_checkpoint, load_tensors, read_json, save_tensors, write_json
from minipost.peft.adapter import AdapterLinear
from minipost.peft.lora import LoRALinear
from minipost.peft.prefix import PrefixEncoder, PrefixKV
from minipost.peft.probe import LinearProbe
from minipost.peft.prompt import PromptEmbedding
from minipost.peft.settings import METHODS, SETTINGS, recorded

ADAPTER_FILE, CONFIG_FILE = "adapter.safetensors", "adapter.json"
# Settings that only matter while training (or at initialisation, which the loaded tensors
# replace); an adapter loads onto a model carrying the same method if all others agree.
_TRAINING_ONLY = ("dropout", "init")
# The modules a method adds; their parameters, except the wrapped base, are what it trains.
_PEFT_MODULES = (LoRALinear, AdapterLinear, PrefixKV, PrefixEncoder, PromptEmbedding, LinearProbe)


def _base_gpt(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, LinearProbe) else model


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter, for every parameter a PEFT method added (none of the base model's)."""
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, _PEFT_MODULES):
            for name, p in module.named_parameters():
                if not name.startswith(("base.", "model.")):
                    out[f"{mod_name}.{name}" if mod_name else name] = p
    return out


def adapter_meta(model: nn.Module) -> dict:
    """What adapter.json holds: {"method", "settings", "base_model"} of the method applied."""
    config = recorded(model)
    if config is None:
        raise ValueError("save_adapter: no PEFT method applied to this model (save a fully fine-tuned "
                         "model with minipost.checkpoint.save_model)")
    settings = {k: v for k, v in config.items() if k != "method"}
    return {"method": config["method"], "settings": settings, "base_model": _base_gpt(model).cfg.to_dict()}


def save_adapter(model: nn.Module, path_dir: str | Path) -> None:
    """Write path_dir/adapter.safetensors (the trained tensors) and path_dir/adapter.json
    (method, settings, base model config), each atomically. The stages save the same two
    files inside a checkpoint unit instead (stages/common.save_stage)."""
    meta = adapter_meta(model)
    path_dir = Path(path_dir)
    save_tensors(adapter_tensors(model), path_dir / ADAPTER_FILE)
    write_json(meta, path_dir / CONFIG_FILE)


def _check_same(expected: dict, actual: dict, what: str, source: Path) -> None:
    diff = [f"{k}: adapter has {expected.get(k)!r}, model has {actual.get(k)!r}"
            for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    if diff:
        raise CheckpointError(f"{source}: {what} does not match; " + "; ".join(diff))


def load_adapter(model: nn.Module, path_dir: str | Path) -> nn.Module:
    """Load an adapter saved by save_adapter onto `model` (a GPT with the same config). A model
    without a method gets it applied first, from adapter.json; a model with one must carry
    the same method and settings. Returns the model (for a probe: the LinearProbe).
    path_dir: a run directory (its current checkpoint unit is read) or a checkpoint directory."""
    path_dir = current_checkpoint(path_dir) or Path(path_dir)
    meta_path = path_dir / CONFIG_FILE
    meta = read_json(meta_path)
    missing = [k for k in ("method", "settings", "base_model") if k not in meta]
    if missing or meta.get("method") not in METHODS[1:]:
        raise CheckpointError(f"{meta_path}: expected keys method (one of {METHODS[1:]}), settings, base_model; "
                              f"missing {missing}, method {meta.get('method')!r}")
    _check_same(meta["base_model"], _base_gpt(model).cfg.to_dict(), "the base model config", meta_path)
    saved = {"method": meta["method"], **meta["settings"]}
    current = recorded(model)
    if current is None:
        from minipost.peft import apply_peft

        try:  # the init is replaced by the loaded tensors (and a text init would need the tokenizer)
            model = apply_peft(model, **{k: v for k, v in saved.items() if k != "init"})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{meta_path}: cannot apply {saved}: {e}") from e
    else:
        # An older adapter.json may lack settings that were at their defaults then.
        defaults = {"method": saved["method"], **asdict(SETTINGS[saved["method"]]())}
        keep = lambda d: {k: list(v) if isinstance(v, tuple) else v  # noqa: E731
                          for k, v in d.items() if k not in _TRAINING_ONLY}
        _check_same(keep({**defaults, **saved}), keep(current), "the PEFT method", meta_path)

    tensor_path = path_dir / ADAPTER_FILE
    tensors, own = load_tensors(tensor_path), adapter_tensors(model)
    if set(tensors) != set(own):
        raise CheckpointError(f"{tensor_path}: tensor names do not match the model's adapter; missing "
                              f"{sorted(set(own) - set(tensors))[:5]}, unexpected {sorted(set(tensors) - set(own))[:5]}")
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise CheckpointError(f"{tensor_path}: {name} has shape {tuple(t.shape)} in the file, "
                                  f"{tuple(own[name].shape)} in the model")
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t)
    return model
