"""Supervised fine-tuning loss: next-token negative log-likelihood.

Maximum likelihood on the demonstration tokens (the instruction-tuning objective of e.g.
Ouyang et al. 2022, "Training language models to follow instructions with human feedback"):

    loss = - (1 / N) * sum over scored positions (b, t) of log p(targets[b, t] | prefix)

where N is the number of scored positions (targets != -100). Which tokens are scored (prompt
masked or not) is decided when the targets are built (minipost.chat), not here.

Gradient accumulation: averaging the per-micro-batch means weights every micro-batch equally,
so a token in a micro-batch with few scored tokens counts more than a token in a long one.
`sft_loss_sum` returns the summed NLL and the token count instead, so the training loop can
divide every micro-batch's sum by the token count of the whole accumulated batch; the summed
gradients then equal those of one big batch's token mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minipost.losses._masked import IGNORE_INDEX


def sft_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL over the scored tokens, and how many tokens were scored.

    logits:  [B, T, V]; logits[:, t] predicts targets[:, t] (pre-shifted)
    targets: [B, T] int64, -100 = no loss
    returns: (summed_nll, n_tokens): a float32 scalar with grad, and an int64 scalar tensor.

    Why a sum: with gradient accumulation over micro-batches m = 1..M, the full-batch mean is
    sum_m summed_nll_m / sum_m n_tokens_m. Dividing each micro-batch's summed_nll by the total
    count (count it up front from the targets: `(targets != -100).sum()` over all micro-batches)
    reproduces that exactly, whereas averaging per-micro-batch means would weight the tokens of
    short micro-batches more.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"sft loss expects logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    # Upcast: the loss is computed in float32 even when the model runs in bf16 (docs/DESIGN.md §2).
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    summed = F.cross_entropy(
        x.reshape(-1, x.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    n_tokens = (targets != IGNORE_INDEX).sum()
    return summed, n_tokens


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over the scored tokens (targets != -100); 0 if none is scored.

    logits:  [B, T, V]
    targets: [B, T] int64, -100 = no loss
    returns: scalar (float32, or float64 for float64 logits)
    """
    summed, n_tokens = sft_loss_sum(logits, targets)
    return summed / n_tokens.clamp(min=1)
