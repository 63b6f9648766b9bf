"""Bottleneck adapters inside each transformer block.

Houlsby et al. (2019), "Parameter-Efficient Transfer Learning for NLP", §2.1, Figure 2.
A small bottleneck module with a skip connection is inserted after the attention's output
projection and after the feed-forward's down projection, inside the residual branch
(before the branch is added back to the stream):

    o'  = o + W_up act(W_down o + b_down) + b_up      W_down [m, d], W_up [d, m], m << d

so each block becomes  h = x + Adapter(o_proj(...)),  y = h + Adapter(down_proj(...)).

W_up and b_up start at zero, so o' = o exactly and the adapted model starts as the base
model; W_down is initialised like any nn.Linear (if both were zero, neither would get a
gradient). act = GELU.

Deviations: Houlsby et al. also train the layer norms and initialise both projections
near zero (near-identity, not exact identity); here the norms stay frozen so that
`disable_adapters` recovers the exact base model (the reference model of DPO/PPO), and
the zero up projection makes the start exact.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minipost.peft.settings import AdapterSettings, record

ADAPTER_TARGETS = ("o_proj", "down_proj")


class AdapterLinear(nn.Module):
    """A frozen linear layer followed by a bottleneck adapter on its output.

    forward: x [..., in] -> o + up(gelu(down(o))) [..., out] with o = base(x).
    base is kept as `.base` (state dict: `...o_proj.base.weight`, `...o_proj.down.weight`, ...).
    """

    def __init__(self, base: nn.Linear, bottleneck: int):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        base.requires_grad_(False)
        self.base = base
        w = base.weight
        self.down = nn.Linear(base.out_features, bottleneck, device=w.device, dtype=w.dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, base.out_features, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.disabled = False  # set by disable_adapters: compute base(x) only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.base(x)
        if self.disabled:
            return o
        return o + self.up(self.act(self.down(o)))


def apply_adapters(model: nn.Module, bottleneck: int = AdapterSettings.bottleneck) -> nn.Module:
    """Freeze `model` (a GPT) and wrap every attn.o_proj and mlp.down_proj in an
    AdapterLinear of the given bottleneck width. Returns the model, changed in place."""
    model.requires_grad_(False)
    for layer in model.layers:
        layer.attn.o_proj = AdapterLinear(layer.attn.o_proj, bottleneck)
        layer.mlp.down_proj = AdapterLinear(layer.mlp.down_proj, bottleneck)
    record(model, "adapter", AdapterSettings(bottleneck))
    return model.train(model.training)  # the new modules follow the model's train/eval mode
