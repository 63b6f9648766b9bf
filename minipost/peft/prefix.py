"""Prefix tuning: learned keys and values that every position of every layer may attend to.

Li & Liang (2021), "Prefix-Tuning: Optimizing Continuous Prompts for Generation", §4.
The activations of P virtual positions are free parameters P_theta; the frozen model's
real positions are computed as usual but see them in every layer:

    h_i = P_theta[i, :]                    if i is a prefix position
    h_i = LM_phi(z_i, h_<i)                otherwise (phi frozen)

In a transformer the only way position i sees position j is through j's key and value, so
the parameters are, per layer l, K_l and V_l [n_kv_head, P, head_dim]. Attention of query
q over [K_l; k], [V_l; v] becomes

    o = sum_j softmax_j(q . [K_l; k]_j / sqrt(head_dim) + mask_j) [V_l; v]_j

where the prefix keys are visible to every query (also across packed documents) and carry
no RoPE rotation: they are not tokens and have no position (model.py, Attention.prefix).

Reparameterization (projection=True, §4.3): optimizing P_theta directly was unstable in
the paper, so it is produced by a small MLP from a smaller matrix,
    [K_1, V_1, ..., K_L, V_L] = MLP(E),   E [P, d_model],  MLP = Linear -> tanh -> Linear,
one MLP for all layers. After training only its output matters (it could be computed once
and kept as plain prefixes).

Not the identity at the start, by construction: a prefix adds P attended keys to every
softmax, taking attention mass from the real keys, so even freshly applied the outputs
change (unlike LoRA or adapters, whose zero-initialised matrices make them exact no-ops).
Deviations: random initialisation (normal, std 0.02 like the model's weights) rather than
the paper's suggested activations of real words; K and V are per kv-head (grouped-query
attention shares them across the query heads of a group).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minipost.peft.settings import PrefixSettings, record


class PrefixKV(nn.Module):
    """One layer's learned prefix: key, value [n_kv_head, P, head_dim].
    forward(batch_size) -> (k, v), each [B, n_kv_head, P, head_dim] (a broadcast view)."""

    def __init__(self, n_kv_head: int, n_virtual: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        self.key = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, device=device, dtype=dtype) * 0.02)
        self.value = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, device=device, dtype=dtype) * 0.02)

    @property
    def n_virtual(self) -> int:
        return self.key.shape[1]

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key.expand(batch_size, -1, -1, -1), self.value.expand(batch_size, -1, -1, -1)


class PrefixEncoder(nn.Module):
    """The reparameterization of §4.3: E [P, d_model] -> tanh MLP -> every layer's K and V.
    forward() -> [n_layer, 2, n_kv_head, P, head_dim] (index 1: 0 = keys, 1 = values)."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, n_virtual: int, d_model: int, hidden: int):
        super().__init__()
        self.out_shape = (n_virtual, n_layer, 2, n_kv_head, head_dim)
        self.embedding = nn.Parameter(torch.randn(n_virtual, d_model) * 0.02)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, n_layer * 2 * n_kv_head * head_dim)
        )

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding).view(self.out_shape).permute(1, 2, 3, 0, 4)


class EncodedPrefix(nn.Module):
    """Layer `layer`'s slice of a shared PrefixEncoder; forward(batch_size) -> (k, v) like PrefixKV.

    The encoder is held by reference and not registered as a submodule here: it is
    registered once, as model.prefix_encoder, so its weights appear once in the state dict.
    The MLP is re-run by each layer (a few small matmuls), so it always reflects the current
    weights without any cache to invalidate after an optimizer step.
    """

    def __init__(self, encoder: PrefixEncoder, layer: int):
        super().__init__()
        object.__setattr__(self, "encoder", encoder)
        self.layer = layer

    @property
    def n_virtual(self) -> int:
        return self.encoder.out_shape[0]

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.encoder()[self.layer]
        return kv[0].expand(batch_size, -1, -1, -1), kv[1].expand(batch_size, -1, -1, -1)


def apply_prefix(model: nn.Module, n_virtual: int = PrefixSettings.n_virtual,
                 projection: bool = PrefixSettings.projection, hidden: int | None = PrefixSettings.hidden) -> nn.Module:
    """Freeze `model` (a GPT) and give every attention layer n_virtual learned key/value
    positions (Attention.prefix). projection=True produces them with the shared MLP of
    PrefixEncoder (hidden width `hidden`, default d_model). Returns the model, in place."""
    if n_virtual < 1:
        raise ValueError(f"n_virtual must be >= 1, got {n_virtual}")
    cfg = model.cfg
    model.requires_grad_(False)
    w = model.tok_emb.weight
    if projection:
        encoder = PrefixEncoder(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, n_virtual, cfg.d_model, hidden or cfg.d_model)
        model.prefix_encoder = encoder.to(device=w.device, dtype=w.dtype)
        for i, layer in enumerate(model.layers):
            layer.attn.prefix = EncodedPrefix(model.prefix_encoder, i)
    else:
        for layer in model.layers:
            layer.attn.prefix = PrefixKV(cfg.n_kv_head, n_virtual, cfg.head_dim, device=w.device, dtype=w.dtype)
    record(model, "prefix", PrefixSettings(n_virtual, projection, (hidden or cfg.d_model) if projection else None))
    return model.train(model.training)  # the new modules follow the model's train/eval mode
