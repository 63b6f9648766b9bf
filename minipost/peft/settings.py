"""What a PEFT method was applied with: one dataclass per method, the ONE place for its
defaults, and METHODS, the one list of methods (cli.py's --peft choices come from it).

Each apply_* takes its defaults from its dataclass and, once applied, records the settings
on the model it returns (`record`); `peft.peft_config(model)` returns that record, and
`save_adapter` writes it to adapter.json as {"method", "settings", "base_model"}. Nothing is
reverse-engineered from module shapes: a setting that leaves no trace in the modules
(prompt tuning's init, LoRA's dropout) is recorded all the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRASettings:  # lora.py; also "qlora" (quantize="nf4")
    r: int = 8
    alpha: float = 16
    targets: tuple[str, ...] = LORA_TARGETS
    dropout: float = 0.0
    rslora: bool = False
    quantize: str | None = None
    double_quant: bool = False


@dataclass(frozen=True)
class PrefixSettings:  # prefix.py; hidden None = d_model (recorded as the width used)
    n_virtual: int = 16
    projection: bool = False
    hidden: int | None = None


@dataclass(frozen=True)
class PromptSettings:  # prompt.py; init: "random", "vocab" or a text
    n_virtual: int = 16
    init: str = "random"


@dataclass(frozen=True)
class AdapterSettings:  # adapter.py
    bottleneck: int = 32


@dataclass(frozen=True)
class ProbeSettings:  # probe.py; n_classes has no default (the data says)
    n_classes: int | None = None
    pooling: str = "mean"


SETTINGS = {"lora": LoRASettings, "qlora": LoRASettings, "prefix": PrefixSettings, "prompt": PromptSettings,
            "adapter": AdapterSettings, "probe": ProbeSettings}
METHODS = ("none", *SETTINGS)
_ATTR = "peft_settings"  # where the record lives on the model


def record(model: nn.Module, method: str, settings) -> None:
    """Note on `model` that `method` was applied with `settings` (its dataclass)."""
    current = getattr(model, _ATTR, None)
    if current is not None:
        raise ValueError(f"the model carries more than one PEFT method: {current[0]!r} is applied, "
                         f"{method!r} cannot be added (one method per model)")
    object.__setattr__(model, _ATTR, (method, settings))  # a plain attribute, not a submodule


def clear(model: nn.Module) -> None:
    """Forget the record (after merge_and_unwrap the model is a plain GPT again)."""
    object.__setattr__(model, _ATTR, None)


def recorded(model: nn.Module) -> dict | None:
    """{"method": ..., setting: value, ...} as recorded (lists for tuples, as in JSON), or None."""
    rec = getattr(model, _ATTR, None)
    if rec is None:
        return None
    method, settings = rec
    return {"method": method, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}}
