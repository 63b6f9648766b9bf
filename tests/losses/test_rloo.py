"""rloo_advantages, kl_penalized_rewards and rloo_loss against explicit loops in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.losses import group_advantages, kl_penalized_rewards, rloo_advantages, rloo_loss


def ref_rloo_advantages(rewards, k):
    out = []
    for g in range(0, len(rewards), k):
        group = rewards[g : g + k]
        for i, r in enumerate(group):
            others = [group[j] for j in range(k) if j != i]
            out.append(r - sum(others) / (k - 1))
    return out


def test_advantages_match_loop():
    rewards = [1.0, 0.0, 0.0, 0.5, 2.0, -1.0, 3.0, 3.0, 0.25]
    got = rloo_advantages(torch.tensor(rewards, dtype=torch.float64), 3)
    assert torch.allclose(got, torch.tensor(ref_rloo_advantages(rewards, 3), dtype=torch.float64), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(k=st.integers(2, 6), n_groups=st.integers(1, 4), data=st.data())
def test_advantages_sum_to_zero_per_group(k, n_groups, data):
    rewards = data.draw(st.lists(st.floats(-10, 10), min_size=k * n_groups, max_size=k * n_groups))
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = rloo_advantages(r, k)
    assert torch.allclose(adv.view(n_groups, k).sum(1), torch.zeros(n_groups, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(adv, torch.tensor(ref_rloo_advantages(rewards, k), dtype=torch.float64), atol=1e-9)
    # Known identity: leave-one-out = k/(k-1) times the mean-centred reward.
    assert torch.allclose(adv, k / (k - 1) * group_advantages(r, k, scale="none"), atol=1e-9)


def test_advantages_validate():
    with pytest.raises(ValueError, match="multiple"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), 1)


def test_kl_penalized_rewards_match_loop():
    g = torch.Generator().manual_seed(0)
    N, T, beta = 4, 5, 0.05
    rewards = torch.randn(N, generator=g, dtype=torch.float64)
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    ref = -torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    old[~mask] = float("nan")  # padding must not leak in
    got = kl_penalized_rewards(rewards, old, ref, mask, beta)
    want = []
    for i in range(N):
        kl = sum(old[i, t].item() - ref[i, t].item() for t in range(T) if mask[i, t])
        want.append(rewards[i].item() - beta * kl)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert not got.requires_grad


def ref_rloo_loss(seq, old, adv, eps):
    total, n_clipped = 0.0, 0
    for s, o, a in zip(seq, old, adv):
        ratio = math.exp(s - o)
        unclipped = -a * ratio
        clipped = -a * min(max(ratio, 1 - eps), 1 + eps)
        total += max(unclipped, clipped)
        n_clipped += clipped > unclipped
    return total / len(seq), n_clipped / len(seq)


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_loss_matches_loop_with_clipped_branches(eps):
    seq = torch.tensor([-10.0, -12.0, -8.0, -9.0, -11.0, -10.0], dtype=torch.float64)
    # ratios exp(+0.5), exp(-0.5), exp(0.05), exp(-0.5), exp(+0.5), 1
    old = seq - torch.tensor([0.5, -0.5, 0.05, -0.5, 0.5, 0.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.7, 1.0], dtype=torch.float64)
    loss, stats = rloo_loss(seq, old, adv, epsilon=eps)
    want, want_clip = ref_rloo_loss(seq.tolist(), old.tolist(), adv.tolist(), eps)
    assert math.isclose(loss.item(), want, rel_tol=1e-12)
    assert math.isclose(stats["clip_ratio"].item(), want_clip, rel_tol=1e-12)
    assert 0 < want_clip < 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_on_policy_gradient_equals_reinforce_loo(seed):
    g = torch.Generator().manual_seed(seed)
    seq = (-torch.rand(6, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    adv = rloo_advantages(torch.randn(6, generator=g, dtype=torch.float64), 3)
    loss, stats = rloo_loss(seq, seq.detach(), adv)
    loss.backward()
    assert torch.allclose(seq.grad, -adv / 6, atol=1e-15)
    assert stats["clip_ratio"].item() == 0.0


def test_loss_validates_shapes():
    with pytest.raises(ValueError, match="same shape"):
        rloo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
