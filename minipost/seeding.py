"""One rule for every random draw a stage makes: rng(seed, *keys) -> torch.Generator.

A draw is named by the run's --seed and keys that say which draw it is, e.g.
rng(seed, "epoch", 3) shuffles the fourth epoch, rng(seed, "prompts", step) picks the RL
prompts of a step. The generator's seed is

    int.from_bytes(sha256(repr((seed, *keys)).encode()).digest()[:8], "big") & (2**63 - 1)

a 63-bit number (torch's manual_seed takes any int below 2**64; 63 bits keep it positive
everywhere). Hashing instead of arithmetic like seed * 1_000_003 + step means no two
(seed, keys) share a stream by coincidence (seed 1 step 0 vs seed 0 step 1_000_003) and
different draws (prompts and sampling of the same step) never coincide. Each draw is a
function of its keys only, never of earlier draws, so --resume draws exactly what an
uninterrupted run would, whatever order the draws are made in.
"""
from __future__ import annotations

import hashlib

import torch


def derive(seed: int, *keys: int | str) -> int:
    """The 63-bit seed of the draw named by (seed, *keys); keys are ints or strings."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def rng(seed: int, *keys: int | str, device="cpu") -> torch.Generator:
    """A torch.Generator (on `device`) seeded with derive(seed, *keys)."""
    return torch.Generator(device=device).manual_seed(derive(seed, *keys))
