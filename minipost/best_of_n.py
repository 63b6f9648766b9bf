"""Best-of-n sampling: draw n replies, keep the one the (proxy) reward model scores highest.

The simplest way to optimise a reward model at inference time, and the yardstick of
Stiennon et al. 2020 ("Learning to summarize from human feedback", appendix) and Gao et
al. 2023 ("Scaling laws for reward model overoptimization"): as n grows, the proxy score of
the chosen reply rises for sure, while its gold score rises, then falls once the proxy is
overoptimised. The distance from the sampling policy grows with n as the analytic KL

    KL(best-of-n || policy) = log n - (n - 1) / n

(exact for continuous, distinct rewards; Beirami et al. 2024 show it is an upper bound in
general). Gao et al. plot gold and proxy against sqrt(KL).

Estimator. Gao et al. average over all n-subsets of the N samples (an unbiased estimate of
the best-of-n expectation). Here the best of n is taken among the FIRST n samples of each
prompt: one pass, the subsets are nested (the best of 2n is taken over a superset of the
best of n, so the proxy curve never falls, per prompt), at the cost of a noisier estimate.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def bon_kl(n: int) -> float:
    """KL(best-of-n policy || sampling policy) = log n - (n - 1) / n, in nats; 0 at n = 1."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(scores: torch.Tensor) -> torch.Tensor:
    """scores [P, N] (P prompts, N samples each) -> [P] int64, the index of each row's highest
    score; on a tie the earlier sample wins."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be [P, N] with N >= 1, got shape {tuple(scores.shape)}")
    return scores.argmax(1)  # torch documents argmax as returning the first maximal index


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to and including the largest power of two <= limit."""
    return [2 ** k for k in range(int(math.log2(limit)) + 1)] if limit >= 1 else []


def bon_curve(proxy: torch.Tensor, gold: torch.Tensor, ns: Sequence[int] | None = None) -> list[dict]:
    """Proxy and gold score of the best-of-n reply for each n, averaged over the prompts.

    proxy, gold: [P, N] scores of the same samples (sample j of prompt p in column j). For
    each n (default 1, 2, 4, ..., up to min(N, 64)), the best by proxy among the first n
    samples of each row is kept. Returns [{"n", "kl" (bon_kl(n)), "proxy", "gold"}] with the
    means over the P prompts of the kept samples' scores.
    """
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must have the same shape [P, N], got {tuple(proxy.shape)} "
                         f"and {tuple(gold.shape)}")
    n_samples = proxy.shape[1]
    ns = list(ns) if ns is not None else powers_of_two(min(n_samples, 64))
    if any(n < 1 or n > n_samples for n in ns):
        raise ValueError(f"every n must lie in [1, {n_samples}] (the samples per prompt), got {ns}")
    rows = torch.arange(proxy.shape[0])
    out = []
    for n in ns:
        best = best_of_n(proxy[:, :n])
        out.append({"n": n, "kl": bon_kl(n), "proxy": proxy[rows, best].double().mean().item(),
                    "gold": gold[rows, best].double().mean().item()})
    return out
