"""Pure loss functions of every training stage (docs/DESIGN.md §7). Each module names its paper."""

from minipost.losses._masked import IGNORE_INDEX, masked_mean, masked_sum, masked_var
from minipost.losses.dpo import dpo_loss
from minipost.losses.grpo import grpo_loss, group_advantages, k3_kl
from minipost.losses.ppo import gae, ppo_policy_loss, ppo_value_loss, whiten
from minipost.losses.reward import reward_loss
from minipost.losses.rloo import kl_penalized_rewards, rloo_advantages, rloo_loss
from minipost.losses.sft import sft_loss, sft_loss_sum

__all__ = [
    "IGNORE_INDEX",
    "dpo_loss",
    "gae",
    "grpo_loss",
    "group_advantages",
    "k3_kl",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reward_loss",
    "rloo_advantages",
    "rloo_loss",
    "sft_loss",
    "sft_loss_sum",
    "whiten",
]
