"""Masked reductions shared by the losses and by minipost.logprobs.

A mask marks the positions that count: True, or any nonzero number, is active. Every loss in
this package reduces over "the active tokens only", so the reduction lives here once.

Two choices, both on purpose:
- Inactive positions are replaced by 0 with torch.where before reducing, not multiplied by the
  mask, so a NaN or inf sitting in padding (say exp of a garbage log-ratio) cannot leak into
  the value: 0 * inf is NaN, where(False, inf, 0) is 0.
- A slice with no active position reduces to 0, not NaN (the count is clamped to at least 1),
  the same convention as TRL's `.clamp(min=1.0)`. An empty completion then adds nothing.
"""

from __future__ import annotations

import torch

# docs/DESIGN.md §2: a target of -100 means "no loss here" (the PyTorch cross_entropy default).
IGNORE_INDEX = -100


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError naming the arguments unless all given tensors have the same shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected tensors of the same shape, got {listed}")


def _active(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tensor shape {tuple(x.shape)}")
    return mask.bool()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over the active positions.

    x:    [...] any tensor
    mask: same shape as x; nonzero / True = active
    dim:  None reduces everything to a scalar; an int reduces that dimension only
    """
    m = _active(x, mask)
    kept = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_count(mask: torch.Tensor, dim: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Number of active positions (as `dtype`), over everything or along `dim`."""
    m = mask.bool().to(dtype)
    return m.sum() if dim is None else m.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the active positions; 0 where there are none.

    x:    [...] any floating tensor
    mask: same shape as x; nonzero / True = active
    dim:  None gives a scalar mean over all active positions; an int gives the mean along
          that dimension (e.g. dim=-1 on [B, T] gives one mean per row, [B])
    """
    total = masked_sum(x, mask, dim)
    count = masked_count(mask, dim, dtype=total.dtype)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all active positions (a scalar), unbiased by default.

    Unbiased (divide by n - 1) as in TRL's `masked_var`, which `whiten` follows.
    Raises ValueError when there are too few active positions for the estimate.
    """
    n = int(masked_count(mask, dtype=torch.float64).item())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} active positions, got {n}")
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    return sq / (n - 1 if unbiased else n)
