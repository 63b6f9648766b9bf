"""Model merging: combining the weights of models fine-tuned from one base, no training.

Every function takes state dicts {name: tensor} with the same names and shapes (the GPT's
weights, checkpoint.model_tensors) and returns a new one. Arithmetic is done in float64 and
the result cast back to the inputs' dtype (float32), so a merge that should give an input
back gives it back bit for bit (a weighted sum of one model with itself, weights [1, 0]).

Linear merge / model soup (Wortsman et al. 2022, "Model soups"), with weights w_i that sum
to 1:

    theta = sum_i w_i theta_i

WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models") is the linear merge
of a base and one fine-tuned model, alpha in [0, 1]:

    theta = (1 - alpha) theta_base + alpha theta_ft

Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"): a task vector
is what fine-tuning added to the base, tau_i = theta_i - theta_base; adding scaled task
vectors adds the skills:

    theta = theta_base + lambda * sum_i w_i tau_i

TIES-merging (Yadav et al. 2023, "TIES-Merging: Resolving interference when merging
models"), per coordinate p, with tau_i = w_i (theta_i - theta_base):

    1. trim:        keep the k = round(density * n) largest |tau_i| of each tensor of n
                    entries, set the rest to 0                       -> t_i
    2. elect sign:  gamma_p = sign(sum_i t_i,p)                      (the sign of larger mass)
    3. disjoint mean over the tasks that agree: A_p = {i : t_i,p != 0 and sign(t_i,p) = gamma_p}
                    tau_p = sum_{i in A_p} t_i,p / |A_p|,  0 where A_p is empty
    theta = theta_base + lambda * tau

Deviation from the paper: the top-k trim is per tensor, not over the whole flattened model
(as PEFT's `ties` and mergekit do it), so each weight matrix keeps the same share of its own
entries; a tensor whose deltas are small overall is not wiped out by another's large ones.
Ties in magnitude keep the earlier entry (a stable sort), so the result is deterministic.
The per-model weights w_i scale the task vectors before trimming, as in PEFT.
"""
from __future__ import annotations

from typing import Sequence

import torch

State = dict[str, torch.Tensor]


def check_compatible(states: Sequence[State], names: Sequence[str] | None = None) -> None:
    """Raise ValueError unless every state dict has the first one's keys, shapes and a float
    dtype. names: how to call each state in the message (e.g. its checkpoint path)."""
    if not states:
        raise ValueError("merging needs at least one model")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(states))]
    if len(names) != len(states):
        raise ValueError(f"{len(names)} names for {len(states)} models")
    ref = states[0]
    for name, state in zip(names, states):
        missing = sorted(set(ref) - set(state))
        extra = sorted(set(state) - set(ref))
        if missing or extra:
            raise ValueError(f"{name}: tensor names differ from {names[0]}: missing {missing[:5]}, "
                             f"unexpected {extra[:5]} (merge models of the same architecture)")
        for key, t in state.items():
            if t.shape != ref[key].shape:
                raise ValueError(f"{name}: {key} has shape {tuple(t.shape)}, {names[0]} has "
                                 f"{tuple(ref[key].shape)} (merge models of the same architecture)")
            if not t.is_floating_point():
                raise ValueError(f"{name}: {key} is {t.dtype}, expected a floating-point tensor")


def _check_weights(weights: Sequence[float], n: int) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} models")
    return weights


def linear_merge(states: Sequence[State], weights: Sequence[float], names: Sequence[str] | None = None) -> State:
    """theta = sum_i w_i theta_i; the weights must sum to 1 (within 1e-6).

    states: N state dicts with equal keys and shapes; weights: N floats.
    """
    check_compatible(states, names)
    weights = _check_weights(weights, len(states))
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"linear merge weights must sum to 1, got {weights} (sum {sum(weights):.6g})")
    out = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for w, state in zip(weights, states):
            acc += w * state[key].double()
        out[key] = acc.to(ref.dtype)
    return out


def wise_ft(base: State, finetuned: State, alpha: float) -> State:
    """WiSE-FT: (1 - alpha) theta_base + alpha theta_ft, alpha in [0, 1]; alpha = 0 gives the
    base back exactly, alpha = 1 the fine-tuned model."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    return linear_merge([base, finetuned], [1.0 - alpha, alpha], ["base", "fine-tuned"])


def task_vectors(base: State, states: Sequence[State], weights: Sequence[float]) -> list[dict[str, torch.Tensor]]:
    """tau_i = w_i (theta_i - theta_base) in float64, one dict per model."""
    return [{key: w * (state[key].double() - base[key].double()) for key in base}
            for w, state in zip(weights, states)]


def task_arithmetic(base: State, states: Sequence[State], weights: Sequence[float] | None = None,
                    scale: float = 1.0, names: Sequence[str] | None = None) -> State:
    """theta = theta_base + scale * sum_i w_i (theta_i - theta_base); weights default to 1 each.
    scale is the paper's lambda."""
    names = ["base", *(names or [f"model {i}" for i in range(len(states))])]
    check_compatible([base, *states], names)
    weights = _check_weights(weights if weights is not None else [1.0] * len(states), len(states))
    taus = task_vectors(base, states, weights)
    return {key: (ref.double() + scale * sum(t[key] for t in taus)).to(ref.dtype) for key, ref in base.items()}


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1: keep the k = round(density * n) entries of largest magnitude of tau (any
    shape, n entries), zero the rest; on equal magnitudes the earlier (flattened) entry wins."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")
    flat = tau.reshape(-1)
    k = round(density * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat.abs(), descending=True, stable=True)[:k]] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def elect_and_merge(trimmed: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES steps 2 and 3 on N trimmed task vectors of one tensor (each of shape S) -> [S]:
    the elected sign gamma = sign(sum_i t_i), then per entry the mean of the t_i that are
    non-zero with sign gamma (0 where none is)."""
    stacked = torch.stack(list(trimmed))                      # [N, *S]
    elected = torch.sign(stacked.sum(0))                      # [*S], 0 where the mass cancels
    agrees = (torch.sign(stacked) == elected) & (stacked != 0)
    count = agrees.sum(0)
    total = torch.where(agrees, stacked, torch.zeros_like(stacked)).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ties_merge(base: State, states: Sequence[State], weights: Sequence[float] | None = None,
               density: float = 0.2, scale: float = 1.0, names: Sequence[str] | None = None) -> State:
    """TIES-merging (module docstring): theta = theta_base + scale * disjoint_mean(elect(trim(tau_i))).

    base and states: state dicts with equal keys and shapes; weights: one per model (default
    1 each), applied to the task vectors before trimming; density in (0, 1]; scale = lambda.
    """
    names = ["base", *(names or [f"model {i}" for i in range(len(states))])]
    check_compatible([base, *states], names)
    weights = _check_weights(weights if weights is not None else [1.0] * len(states), len(states))
    taus = task_vectors(base, states, weights)
    out = {}
    for key, ref in base.items():
        merged = elect_and_merge([trim(t[key], density) for t in taus])
        out[key] = (ref.double() + scale * merged).to(ref.dtype)
    return out


METHODS = ("linear", "task-arithmetic", "ties")
