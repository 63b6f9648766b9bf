"""Direct Preference Optimization and its variants.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model". With the implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)), the
Bradley-Terry likelihood of "chosen y_c beats rejected y_r" becomes a loss on the policy alone:

    delta = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))
    sigmoid:  loss = -log sigmoid(beta * delta)

Variants selected by `loss_type` (eps = label_smoothing, the assumed rate of flipped labels):

    sigmoid, eps > 0  (conservative DPO, Mitchell 2023, "A note on DPO with noisy preferences")
              loss = -(1 - eps) * log sigmoid(beta * delta) - eps * log sigmoid(-beta * delta)
    robust    (Chowdhury et al. 2024, "Provably Robust DPO"), an unbiased loss under label noise
              loss = (-(1 - eps) * log sigmoid(beta * delta) + eps * log sigmoid(-beta * delta))
                     / (1 - 2 * eps)                                     requires eps < 0.5
    ipo       (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
              Human Preferences", eq. 17 with tau = beta)
              loss = (delta - 1 / (2 * beta))^2
    hinge     (the SLiC / RSO hinge, Zhao et al. 2023; Liu et al. 2023)
              loss = max(0, 1 - beta * delta)

Why sequence log-probs are summed by default: DPO's derivation is over whole-sequence
probabilities, pi(y|x) = prod_t pi(y_t | x, y_<t), so log pi(y|x) is the *sum* of the token
log-probs. Averaging would change the implicit reward and the KL-regularised optimum the loss
is derived from.

Why IPO takes length-averaged log-probs: its squared loss pulls delta to a fixed target
1 / (2 * beta). With summed log-probs delta grows with completion length, so long pairs would
dominate the loss and the fixed margin would mean different things for short and long pairs.
The caller passes averages (sequence_logps(..., reduction="mean")); this function is the same
formula either way.

RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 3), a term beside
any of the above: the chosen reply's negative log-likelihood per token, weighted by alpha,

    loss_rpo = alpha * (-log pi(y_c)) / |y_c|

DPO only asks that chosen beat rejected *relative to the reference*; both may fall together,
and a fact the SFT model stated may become less likely. The NLL term keeps the chosen
replies (the ones with the right facts) likely. TRL calls the weight rpo_alpha.

Checked against TRL's DPOTrainer (loss types "sigmoid", "robust", "ipo", "hinge"): the same
formulas, and the same detached rewards beta * (log pi - log pi_ref). Deviations: TRL warns and
ignores label_smoothing for ipo/hinge and accepts eps = 0.5 for robust (a division by zero);
here both raise ValueError, as does a non-positive beta (IPO divides by it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minipost.losses._masked import check_same_shape

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


def check_settings(beta: float, loss_type: str, label_smoothing: float) -> None:
    """Raise ValueError unless (beta, loss_type, label_smoothing) is a valid dpo_loss setting."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    eps = float(label_smoothing)
    if loss_type == "sigmoid" and not 0.0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing for sigmoid DPO must be in [0, 0.5], got {eps}")
    if loss_type == "robust" and not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing for robust DPO must be in [0, 0.5), got {eps} (it divides by 1 - 2*eps)")
    if loss_type in ("ipo", "hinge") and eps != 0.0:
        raise ValueError(f"label_smoothing is defined for sigmoid and robust DPO only, got {eps} with {loss_type!r}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and the implicit rewards.

    policy_chosen_logps:   [B] log pi(chosen | prompt) under the policy (summed over the
                           completion tokens; length-averaged for loss_type="ipo")
    policy_rejected_logps: [B] the same for the rejected completion
    ref_chosen_logps:      [B] the same under the frozen reference model
    ref_rejected_logps:    [B]
    beta:                  > 0, strength of the implicit KL constraint (IPO's tau)
    loss_type:             "sigmoid" | "robust" | "ipo" | "hinge" (see the module docstring)
    label_smoothing:       eps, assumed fraction of flipped labels; sigmoid: 0 <= eps <= 0.5
                           (0 = plain DPO), robust: 0 <= eps < 0.5, ipo/hinge: must be 0
    returns:               (losses [B], chosen_rewards [B], rejected_rewards [B]); the rewards
                           are beta * (log pi - log pi_ref), detached (for logging / accuracy)
    """
    check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_settings(beta, loss_type, label_smoothing)
    eps = float(label_smoothing)

    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratio - rejected_logratio
    z = beta * delta

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - z)

    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    return losses, chosen_rewards, rejected_rewards


def rpo_nll(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """[B] the chosen replies' NLL per token, -log pi(y_c) / |y_c| (RPO's term; weight it by alpha).

    policy_chosen_logps: [B] summed completion log-probs; chosen_lengths: [B] completion tokens.
    """
    check_same_shape(policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    return -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1)
