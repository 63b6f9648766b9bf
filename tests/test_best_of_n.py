"""minipost/best_of_n.py against the formula, an explicit loop, and the nested-subset property."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.best_of_n import best_of_n, bon_curve, bon_kl, powers_of_two


def test_bon_kl_formula():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64, abs=1e-15)
    assert all(bon_kl(n) < bon_kl(n + 1) for n in range(1, 100))  # grows with n
    with pytest.raises(ValueError):
        bon_kl(0)


def loop_argmax(row):
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:  # strictly greater: the first of equal maxima stays
            best = j
    return best


def test_selection_by_hand_and_ties_keep_the_first():
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, 2.0, -1.0], [-5.0, -4.0, -4.0]])
    assert best_of_n(scores).tolist() == [1, 0, 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.5]), min_size=5, max_size=5),
                min_size=1, max_size=6))
def test_selection_matches_a_loop(rows):
    assert best_of_n(torch.tensor(rows)).tolist() == [loop_argmax(r) for r in rows]


def test_curve_by_hand():
    proxy = torch.tensor([[0.0, 3.0, 1.0, 5.0], [2.0, 1.0, 4.0, 0.0]])
    gold = torch.tensor([[1.0, 0.5, 0.0, -1.0], [0.0, 1.0, 0.7, 0.2]])
    curve = bon_curve(proxy, gold)
    assert [c["n"] for c in curve] == [1, 2, 4]
    # n=1: samples 0, 0; n=2: best of first two -> 1, 0; n=4: 3, 2
    assert [c["proxy"] for c in curve] == pytest.approx([(0 + 2) / 2, (3 + 2) / 2, (5 + 4) / 2])
    assert [c["gold"] for c in curve] == pytest.approx([(1 + 0) / 2, (0.5 + 0) / 2, (-1 + 0.7) / 2])
    assert [c["kl"] for c in curve] == [bon_kl(1), bon_kl(2), bon_kl(4)]
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64] and powers_of_two(100) == powers_of_two(64)
    assert powers_of_two(5) == [1, 2, 4] and powers_of_two(1) == [1]
    with pytest.raises(ValueError, match="same shape"):
        bon_curve(proxy, gold[:, :3])
    with pytest.raises(ValueError, match="lie in"):
        bon_curve(proxy, gold, ns=[8])


def test_curve_stops_at_64():
    proxy = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    assert [c["n"] for c in bon_curve(proxy, proxy)] == [1, 2, 4, 8, 16, 32, 64]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 10_000))
def test_proxy_of_the_best_never_falls_as_n_grows(prompts, samples, seed):
    g = torch.Generator().manual_seed(seed)
    proxy = torch.randn(prompts, samples, generator=g).round(decimals=1)  # ties happen
    gold = torch.randn(prompts, samples, generator=g)
    ns = list(range(1, samples + 1))
    curve = bon_curve(proxy, gold, ns)
    # Per prompt: the best of the first n + 1 scores at least the best of the first n.
    picked = torch.stack([proxy[torch.arange(prompts), best_of_n(proxy[:, :n])] for n in ns], 1)
    assert bool((picked[:, 1:] >= picked[:, :-1]).all())
    assert all(b["proxy"] >= a["proxy"] - 1e-12 for a, b in zip(curve, curve[1:]))
    # And it is the running maximum of the proxy scores.
    assert torch.equal(picked, proxy.cummax(1).values)
