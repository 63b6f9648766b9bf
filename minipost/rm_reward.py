"""Rewards from a learned reward model, for RL from human feedback (`--reward-model RUN`).

RLHF (Ziegler et al. 2019, "Fine-tuning language models from human preferences"; Ouyang et
al. 2022, InstructGPT) optimises the policy against r(x, y), the reward model trained by
`--stage rm` (stages/reward.py, value_head.py). A completion y to a prompt x is scored
exactly as the RM stage scores a preference reply: the sequence render_completion(x, y)
(generation prompt + reply + <|end|>) read at its last token, r = w . h_last + b.

Normalisation: the reward handed to RL is

    r_norm(x, y) = (r(x, y) - mu) / sigma

with mu, sigma the mean and (unbiased) standard deviation of the RM's scores of the held-out
preference replies, chosen and rejected together: the `reward_mean` and `reward_std` the rm
stage writes into its eval.json, or, for a run without them, computed once at load on the
held-out preference file (the same scores, the same formula).
How this compares with the common choices:
  - TRL's PPO trainer feeds the raw RM score to the policy; its RewardTrainer can add
    center_rewards_coefficient (Eisenstein et al. 2023), a training-time penalty that keeps
    scores near 0 (our --center-coef), but nothing fixes their spread.
  - Ziegler et al. 2019 normalise the RM to mean 0 and variance 1 on samples of the initial
    policy; InstructGPT shifts it so the labelers' demonstrations score 0 on average.
We standardise with the held-out replies because they exist before any policy does, the RM
never trained on them, and they span good and bad replies; the normaliser is then fixed
for the whole RL run (one computed on the moving policy would change the objective as it
trains). Standardised rewards give the KL coefficient beta and the clip ranges the same
meaning against every RM, whatever scale its training happened to produce. normalize=False
gives the raw scores (TRL's behaviour).

A scorer is also a reward function of DESIGN §14: scorer(completions, prompt=prompts, ...)
returns one float per completion; scorer_reward(scorer) is the form rollout.rollout takes
(every reply scored as it was decoded, whether or not it ended with <|end|>: the RM sees
the same prompt + reply + <|end|> sequence either way, as in its training). TextFunctionScorer wraps a known function of the text in
the same interface, for deterministic RL checks without a trained RM.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

import torch

from minipost import checkpoint
from minipost import data as datasets
from minipost.chat import render_completion
from minipost.packing import pad_batch


def as_messages(prompt) -> list[dict]:
    """A prompt as a message list: a string becomes one user message (the record format's rule)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def held_out_stats(scores: torch.Tensor) -> tuple[float, float]:
    """scores [N, 2] (chosen, rejected) of held-out pairs -> (mean, unbiased std) over all 2N,
    as the rm stage writes them into eval.json."""
    return scores.mean().item(), scores.std().item()


class Scorer(ABC):
    """The interface RL uses: score(prompts, completions) -> [N] normalised rewards.

    Subclasses implement raw_scores(prompts, completions) -> [N] float32.
    mean, std: the normaliser (module docstring); normalize=False returns raw scores.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, normalize: bool = True):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"reward normalisation needs a finite mean and a std > 0, got mean {mean}, std {std}")
        self.mean, self.std, self.normalize = float(mean), float(std), normalize

    @abstractmethod
    def raw_scores(self, prompts: Sequence, completions: Sequence[str]) -> torch.Tensor:
        """prompts: N prompts; completions: N reply texts -> [N] float32 unnormalised scores."""

    def score(self, prompts: Sequence, completions: Sequence[str]) -> torch.Tensor:
        """prompts: N prompts (message lists or strings); completions: N reply texts -> [N] float32."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        raw = self.raw_scores(prompts, completions)
        return (raw - self.mean) / self.std if self.normalize else raw

    def __call__(self, completions: Sequence[str], prompt: Sequence, **columns) -> list[float]:
        """The reward-function form (DESIGN §14): completions and the prompt column -> floats."""
        return self.score(prompt, completions).tolist()


class RewardModelScorer(Scorer):
    """A `--stage rm` run as a reward: RewardModelScorer(run_dir)(completions, prompt=prompts).

    run_dir: the rm stage's --out (model or LoRA adapter, value_head.safetensors, eval.json).
    val_file: held-out preference JSONL for the normaliser when eval.json lacks reward_mean /
    reward_std (default: the built-in pref_val).
    """

    def __init__(self, run_dir: str | Path, device="cpu", batch_size: int = 16, normalize: bool = True,
                 val_file: str | Path | None = None):
        from minipost.stages.reward import load_reward_model

        self.run_dir, self.device, self.batch_size = Path(run_dir), device, batch_size
        self.rm, self.tokenizer = load_reward_model(self.run_dir, device)
        self.rm.eval().requires_grad_(False)
        self.max_len = self.rm.model.cfg.max_seq_len
        eval_path = self.run_dir / "eval.json"
        stats = checkpoint.read_json(eval_path) if eval_path.is_file() else {}
        if "reward_mean" in stats and "reward_std" in stats:
            mean, std = stats["reward_mean"], stats["reward_std"]
        else:
            mean, std = self.held_out_stats(val_file)
        super().__init__(mean, std, normalize)

    def sequence(self, prompt, completion: str) -> list[int]:
        """The RM stage's sequence: generation prompt + completion + <|end|> (the last target
        render_completion returns is the <|end|>, hence the + [targets[-1]])."""
        ids, targets = render_completion(as_messages(prompt), completion, self.tokenizer)
        return [*ids, targets[-1]]

    @torch.no_grad()
    def raw_scores(self, prompts: Sequence, completions: Sequence[str]) -> torch.Tensor:
        """r(x, y) for each pair -> [N] float32, in batches of right-padded sequences."""
        seqs = [self.sequence(p, c) for p, c in zip(prompts, completions)]
        for i, s in enumerate(seqs):
            if len(s) > self.max_len:
                raise ValueError(f"completion {i}: prompt + reply is {len(s)} tokens, more than the reward "
                                 f"model's context of {self.max_len}")
        out = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i: i + self.batch_size]
            batch = pad_batch([(s, s) for s in chunk], self.tokenizer.pad_id)
            lengths = torch.tensor([len(s) for s in chunk], device=self.device)
            out.append(self.rm(batch["input_ids"].to(self.device), lengths).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def held_out_stats(self, val_file=None) -> tuple[float, float]:
        """(mean, std) of the RM's scores of the held-out replies that fit its context."""
        records = datasets.read_preferences(val_file or datasets.builtin("pref_val"))
        pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in records
                 if max(len(self.sequence(r["prompt"], r["chosen"])),
                        len(self.sequence(r["prompt"], r["rejected"]))) <= self.max_len]
        if len(pairs) < 2:
            raise ValueError(f"{val_file or 'pref_val'}: need at least 2 held-out pairs to normalise the rewards")
        prompts = [p for p, _, _ in pairs]
        chosen = self.raw_scores(prompts, [c for _, c, _ in pairs])
        rejected = self.raw_scores(prompts, [r for _, _, r in pairs])
        return held_out_stats(torch.stack([chosen, rejected], 1))


class TextFunctionScorer(Scorer):
    """A reward that is a known function of the text, behind the Scorer interface.

    fn(prompt, completion) -> float; the normaliser is given (mean, std), not measured.
    For deterministic RL checks without a trained RM, and to put a rule-based judge where a
    scorer is expected.
    """

    def __init__(self, fn: Callable[[object, str], float], mean: float = 0.0, std: float = 1.0,
                 normalize: bool = True):
        super().__init__(mean, std, normalize)
        self.fn = fn

    def raw_scores(self, prompts: Sequence, completions: Sequence[str]) -> torch.Tensor:
        return torch.tensor([float(self.fn(p, c)) for p, c in zip(prompts, completions)], dtype=torch.float32)


def scorer_reward(scorer: Scorer):
    """A scorer as the RL stages' reward(texts, ended, records) -> [float] (rollout.rollout):
    each reply scored against its record's prompt."""
    return lambda texts, ended, records: scorer.score([r["prompt"] for r in records], texts).tolist()
