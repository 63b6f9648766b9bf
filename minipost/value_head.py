"""Scalar heads on the GPT's final hidden states: the reward model and PPO's critic.

Reward model (Ouyang et al. 2022, "Training language models to follow instructions with
human feedback", section 3.5; the pairwise model of Bradley & Terry 1952): the language
model's unembedding is replaced by a linear map to one number, read at the last token of
prompt + completion, the only position whose hidden state has seen the whole sequence
under causal attention:

    r(x, y) = w . h_last(x, y) + b          h_last [d_model], w [d_model], b scalar

and trained so that P(y_c beats y_r) = sigmoid(r(x, y_c) - r(x, y_r)) (losses/reward.py).

Critic (PPO): the same head read at every position, V_t = w . h_t + b, the value of the
state "prompt + completion tokens so far" (values()).

Where the last token is: `lengths` (right padding, real tokens 0..n-1) or an attention
mask with 1 on real tokens, on either side (the last position holding a 1).

Initialisation: w ~ N(0, 1 / (d_model + 1)), b = 0, as in OpenAI's lm-human-preferences
reward head, so the first rewards are of order 1 whatever d_model is (the final hidden
states are RMS-normed, entries of order 1). Scores are returned in float32.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from minipost import checkpoint
from minipost.logprobs import pair_hidden_states


class ValueHead(nn.Module):
    """nn.Linear(d_model, 1) on hidden states; `.proj` holds the weight [1, d_model] and bias [1]."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(d_model + 1))
        nn.init.zeros_(self.proj.bias)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, d_model] -> a scalar per position [B, T] (float32)."""
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1).float()

    def score_last(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The head at each row's last real token -> [B] (float32).

        hidden:  [B, T, d_model]
        lengths: [B] number of real tokens of each right-padded row (>= 1); None: no padding
        """
        index = last_index(hidden.shape[:2], lengths, hidden.device)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # [B, d_model]
        return self.proj(picked.to(self.proj.weight.dtype)).squeeze(-1).float()

    def save(self, path: str | Path) -> None:
        checkpoint.save_tensors(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "ValueHead":
        """A head saved by save(); d_model is read from the stored weight's shape."""
        tensors = checkpoint.load_tensors(path)
        if "proj.weight" not in tensors:
            raise checkpoint.CheckpointError(f"{path}: no 'proj.weight' (not a value head)")
        head = cls(tensors["proj.weight"].shape[1])
        checkpoint.load_into(head, tensors, str(path))
        return head


def last_index(shape: tuple[int, int], lengths: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Index of each row's last real position -> [B] int64.

    shape: (B, T). lengths [B] (right-padded rows): index = length - 1; None: T - 1 for
    every row. A length outside [1, T] is an error.
    """
    B, T = shape
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device).long()
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be [B] = [{B}], got {tuple(lengths.shape)}")
        if (lengths < 1).any() or (lengths > T).any():
            raise ValueError(f"lengths must lie in [1, {T}], got {lengths.tolist()}")
        return lengths - 1
    return torch.full((B,), T - 1, dtype=torch.long, device=device)


class RewardModel(nn.Module):
    """A GPT (`.model`) and a ValueHead (`.head`) as one module, so one optimizer and one
    train()/eval() switch cover both. The GPT's lm_head is not used (nor computed).

    forward(input_ids [B, T], lengths [B]) -> rewards [B] (right-padded rows).
    """

    def __init__(self, model: nn.Module, head: ValueHead | None = None):
        super().__init__()
        self.model = model
        w = model.tok_emb.weight
        self.head = (head if head is not None else ValueHead(model.cfg.d_model)).to(w.device)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor, pairs: bool = False) -> torch.Tensor:
        """pairs: the rows are a pair batch (chosen rows, then rejected rows of the same
        prompts), whose shared prompts run once (logprobs.pair_hidden_states; same rewards)."""
        lengths = torch.as_tensor(lengths, device=input_ids.device)
        hidden = pair_hidden_states(self.model, input_ids, lengths) if pairs else None
        if hidden is None:
            hidden = self.model.hidden_states(input_ids)
        return self.head.score_last(hidden, lengths=lengths)
