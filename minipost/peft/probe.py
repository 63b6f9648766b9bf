"""Linear probing: a trained linear classifier on a frozen language model's features.

As in the Stanford CS324 lecture "Adaptation" (Liang et al., 2022), the lightest form of
adaptation: the model is a fixed feature extractor phi, and only a linear head is trained,

    phi(x)   = pool(h_1, ..., h_T)         h_t: the final normed hidden states of the frozen GPT
    logits   = W phi(x) + b                W [n_classes, d_model], b [n_classes]

with pool = the mean over the non-pad positions, or the hidden state of the last non-pad
token (the only position that has seen the whole input, under causal attention).

Padding: pad positions are given their own document id (as generate.py does for left
padding) and the real tokens RoPE positions 0..n-1, so a padded row gives exactly the
features of the sequence alone, whichever side it is padded on.
The head starts at zero (uniform class probabilities), as logistic regression usually does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minipost.peft.settings import ProbeSettings, record

POOLINGS = ("mean", "last")


class LinearProbe(nn.Module):
    """The frozen GPT (`.model`) and a trainable head (`.head`, nn.Linear(d_model, n_classes)).

    forward(input_ids [B, T], attention_mask [B, T] (1 = token, 0 = pad; None = no padding))
        -> class logits [B, n_classes].
    """

    def __init__(self, model: nn.Module, n_classes: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"a probe needs n_classes >= 2, got {n_classes}")
        model.requires_grad_(False)
        self.model, self.pooling, self.cfg = model, pooling, model.cfg
        w = model.tok_emb.weight
        self.head = nn.Linear(model.cfg.d_model, n_classes, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.train(model.training)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled hidden states phi(x) [B, d_model]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.long()
        if (real.sum(1) == 0).any():
            raise ValueError("every row of attention_mask needs at least one real token")
        positions = (real.cumsum(1) - 1).clamp(min=0)
        hidden = self.model.hidden_states(input_ids, doc_ids=real, position_ids=positions)
        if self.pooling == "mean":
            w = real.to(hidden.dtype)[..., None]
            return (hidden * w).sum(1) / w.sum(1)
        last = (real * torch.arange(real.shape[1], device=real.device)).argmax(1)  # index of the last 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


def apply_probe(model: nn.Module, n_classes: int, pooling: str = ProbeSettings.pooling) -> LinearProbe:
    """Freeze `model` (a GPT) and return a LinearProbe around it (the GPT is not changed)."""
    if getattr(model, "peft_settings", None) is not None:
        record(model, "probe", ProbeSettings(n_classes, pooling))  # refuses: one method per model
    probe = LinearProbe(model, n_classes, pooling)
    record(probe, "probe", ProbeSettings(n_classes, pooling))
    return probe
