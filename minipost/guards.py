"""Non-finite guards: a NaN or inf stops the run before it can reach the weights, a
checkpoint or metrics.jsonl.

A NaN spreads silently. A NaN gradient at a step whose loss is finite is applied by the
optimizer and turns every weight it touches into NaN; the next save then writes an
all-NaN checkpoint that loads without complaint, and the run after it fails far from the
cause (e.g. `torch.multinomial`: "probability tensor contains either inf, nan or element
< 0"). So every quantity that feeds the weights is checked where it is made:

    check_step(step, loss=..., grad_norm=...)   before optimizer.step()
    check_tensors(tensors, step, what)          before every save (all trained tensors)
    check_sampling_probs(probs, step)           before sampling a token
    json_record(record)                         a metrics record as strict JSON (NaN -> null)

Each raises NonFiniteError, whose message names the step, the quantity and what to try.
"""
from __future__ import annotations

import json
import math

import torch

ADVICE = "Try a lower --lr (or a smaller --grad-clip / --beta), or check the data of that step."


class NonFiniteError(RuntimeError):
    """A NaN or inf in `quantity` at optimizer step `step` (1-based; None when not known)."""

    def __init__(self, quantity: str, value, step: int | None = None, advice: str = ADVICE):
        self.quantity, self.value, self.step, self.advice = quantity, value, step, advice
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"non-finite {quantity} ({value}){where}; stopping without saving, so the last "
                         f"good checkpoint stays. {advice}")

    def at(self, step: int) -> "NonFiniteError":
        """The same error with the step filled in (for code that does not know the step)."""
        return self if self.step is not None else NonFiniteError(self.quantity, self.value, step, self.advice)


def _as_float(value) -> float:
    return float(value.detach().float().item()) if torch.is_tensor(value) else float(value)


def check_step(step: int, **quantities) -> None:
    """Raise NonFiniteError if any scalar quantity (loss=..., grad_norm=...) is NaN or inf.

    grad_norm is the total norm before clipping (what clip_grad_norm_ returns): one NaN
    gradient element makes it NaN, even when the loss is finite."""
    for name, value in quantities.items():
        v = _as_float(value)
        if not math.isfinite(v):
            raise NonFiniteError(name.replace("_", " "), v, step)


def check_tensors(tensors: dict[str, torch.Tensor], step: int | None = None, what: str = "weights") -> None:
    """Raise NonFiniteError naming the first floating-point tensor with a NaN or inf element.

    tensors: name -> tensor (any shape). Integer tensors (NF4 codes, RNG state) are skipped."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(f"{what} {name!r} ({bad} of {t.numel()} elements)", "nan/inf", step,
                                 "The weights have diverged: resume from an earlier checkpoint with a lower --lr.")


def check_sampling_probs(probs: torch.Tensor, step: int | None = None) -> None:
    """probs: [B, V] the distribution a token is drawn from. Raise NonFiniteError if a row has
    a NaN, an inf or a negative entry, or sums to zero (what torch.multinomial rejects)."""
    finite = torch.isfinite(probs).all(dim=-1) & (probs >= 0).all(dim=-1) & (probs.sum(dim=-1) > 0)
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten().tolist()
        raise NonFiniteError(f"sampling probabilities (rows {rows[:5]})", "nan/inf", step,
                             "The policy's logits have diverged: lower --lr (or --temperature must be > 0).")


def _finite_or_none(v):
    if torch.is_tensor(v):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


def json_record(record: dict) -> str:
    """One metrics.jsonl line: strict JSON (json.dumps writes bare NaN, which JSON parsers
    reject), so a NaN or inf becomes null and the value is dropped, not the line."""
    return json.dumps(_finite_or_none(record), allow_nan=False)
