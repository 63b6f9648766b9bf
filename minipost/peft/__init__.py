"""Parameter-efficient fine-tuning: apply a method, switch it off, save and load what it trained.

The methods (one file each, each with its paper's equation): LoRA / rsLoRA / QLoRA
(lora.py, nf4.py), prefix tuning (prefix.py), prompt tuning (prompt.py), bottleneck
adapters (adapter.py) and the linear probe (probe.py). Each `apply_*` freezes the base
model and adds the method's parameters, which are then the only trainable ones. One method
per model; the settings are recorded when a method is applied (settings.py: one dataclass
per method holds its defaults) and `peft_config(model)` returns that record.

    model = apply_peft(model, "lora", r=8, alpha=16)
    with disable_adapters(model):        # the exact base model: the DPO/PPO reference
        ref_logits = model(input_ids)
    save_adapter(model, "out/sft")       # adapter.safetensors + adapter.json
    model = load_adapter(GPT(cfg), "out/sft")   # applies the method from adapter.json first

Saving and loading (adapter.json + adapter.safetensors): io.py. Folding LoRA into the
weights for the next stage: lora.merge_and_unwrap.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict

import torch.nn as nn

from minipost.peft.adapter import AdapterLinear, apply_adapters
from minipost.peft.io import (ADAPTER_FILE, CONFIG_FILE, _base_gpt, adapter_meta, adapter_tensors, load_adapter,
                             save_adapter)
from minipost.peft.lora import LORA_TARGETS, LoRALinear, apply_lora, merge_and_unwrap, merge_lora, unmerge_lora
from minipost.peft.nf4 import NF4Linear, dequantize_nf4, quantize_nf4
from minipost.peft.prefix import apply_prefix
from minipost.peft.probe import LinearProbe, apply_probe
from minipost.peft.prompt import apply_prompt
from minipost.peft.settings import METHODS, SETTINGS, recorded

__all__ = [
    "METHODS", "apply_peft", "apply_lora", "apply_prefix", "apply_prompt", "apply_adapters", "apply_probe",
    "merge_lora", "unmerge_lora", "merge_and_unwrap", "disable_adapters", "save_adapter", "load_adapter",
    "adapter_tensors", "adapter_meta", "ADAPTER_FILE", "CONFIG_FILE",
    "peft_config",
    "trainable_parameters", "LoRALinear", "AdapterLinear", "LinearProbe", "NF4Linear", "quantize_nf4",
    "dequantize_nf4", "LORA_TARGETS",
]

def apply_peft(model: nn.Module, method: str, tokenizer=None, **settings) -> nn.Module:
    """Apply `method` (one of METHODS) with `settings` (the apply_* keyword arguments) and
    return the model to train: the same GPT, changed in place, or a LinearProbe around it.
    "none" leaves the model as it is (full fine-tuning, everything trainable); "qlora" is
    LoRA with quantize="nf4". `tokenizer` is only used by prompt tuning's text init."""
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; choose from {METHODS}")
    current = peft_config(model)
    if current is not None:
        raise ValueError(f"the model already has {current['method']!r} applied (one method per model)")
    if method == "none":
        return model
    fields = asdict(SETTINGS[method]())  # the defaults (settings.py)
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {method!r}; it takes {sorted(fields)}")
    config = {**fields, **({"quantize": "nf4"} if method == "qlora" else {}), **settings}
    if method == "qlora" and config["quantize"] != "nf4":
        raise ValueError("qlora quantizes to 'nf4' (use method 'lora' for a full-precision base)")
    if method in ("lora", "qlora"):
        return apply_lora(model, **config)
    if method == "prefix":
        return apply_prefix(model, **config)
    if method == "prompt":
        return apply_prompt(model, tokenizer=tokenizer, **config)
    if method == "adapter":
        return apply_adapters(model, **config)
    if method == "probe":
        if config["n_classes"] is None:
            raise ValueError("probe needs n_classes")
        return apply_probe(model, **config)
    return model


def peft_config(model: nn.Module) -> dict | None:
    """The method applied to `model` and its settings, as recorded when it was applied
    ({"method": ..., setting: value, ...}; settings.py), or None for a plain model."""
    return recorded(model)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(n_trainable, n_total): shared (tied) tensors are counted once; an NF4 weight counts
    as its logical number of elements, though it is stored as buffers, half a byte each."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    n_total = sum(p.numel() for p in params)
    n_total += sum(m.logical_numel for m in model.modules() if isinstance(m, NF4Linear))
    return sum(p.numel() for p in params if p.requires_grad), n_total


@contextmanager
def disable_adapters(model: nn.Module):
    """Inside this context the model computes exactly the base model: LoRA branches and
    adapters are skipped, prefix and prompt hooks removed (and restored on exit). Under QLoRA
    the base is the NF4-quantized one. Refuses merged LoRA weights: subtracting B A again
    would give the base weights only up to rounding, not exactly."""
    gpt = _base_gpt(model)
    branches = [m for m in gpt.modules() if isinstance(m, (LoRALinear, AdapterLinear))]
    if any(getattr(m, "merged", False) for m in branches):
        raise RuntimeError("disable_adapters: LoRA is merged into the base weights, so the base model is not "
                           "available exactly; call unmerge_lora(model) first (merge only for inference)")
    saved_flags = [m.disabled for m in branches]
    saved_prefix = [layer.attn.prefix for layer in gpt.layers]
    saved_prompt = gpt.prompt
    try:
        for m in branches:
            m.disabled = True
        for layer in gpt.layers:
            layer.attn.prefix = None
        gpt.prompt = None
        yield model
    finally:
        for m, flag in zip(branches, saved_flags):
            m.disabled = flag
        for layer, prefix in zip(gpt.layers, saved_prefix):
            layer.attn.prefix = prefix
        gpt.prompt = saved_prompt


