"""gae, whiten, the PPO losses and the shared masked reductions against float64 loops."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.losses import gae, masked_mean, ppo_policy_loss, ppo_value_loss, whiten


def spans_mask(B, T, g):
    """Each row active on one contiguous span [start, end) (prompt before, padding after)."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, T, (1,), generator=g))
        end = int(torch.randint(start, T + 1, (1,), generator=g))
        mask[b, start:end] = True
    return mask


# ---------------------------------------------------------------- masked reductions


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert masked_mean(x, mask).item() == (1 + 2 + 4 + 6) / 4
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 5.0, 0.0]  # empty row -> 0, padding ignored
    assert masked_mean(x, mask.bool(), dim=0).tolist() == [2.5, 2.0, 6.0]
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(x, mask[:2])


# ---------------------------------------------------------------- gae


def ref_gae_loop(r, v, m, gamma, lam):
    """Backward recursion over each row's active span, Python floats."""
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        active = [t for t in range(T) if m[b][t]]
        last_a = 0.0
        for i in reversed(range(len(active))):
            t = active[i]
            next_v = v[b][active[i + 1]] if i + 1 < len(active) else 0.0
            delta = r[b][t] + gamma * next_v - v[b][t]
            last_a = delta + gamma * lam * last_a
            adv[b][t] = last_a
    return adv


def ref_gae_sum(r, v, m, gamma, lam):
    """The closed form A_t = sum_l (gamma*lam)^l delta_{t+l}, a second, independent reference."""
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        active = [t for t in range(T) if m[b][t]]
        vals = [v[b][t] for t in active] + [0.0]
        deltas = [r[b][t] + gamma * vals[i + 1] - vals[i] for i, t in enumerate(active)]
        for i, t in enumerate(active):
            adv[b][t] = sum((gamma * lam) ** l * deltas[i + l] for l in range(len(active) - i))
    return adv


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 4),
    T=st.integers(1, 9),
    gamma=st.sampled_from([1.0, 0.99, 0.5]),
    lam=st.sampled_from([1.0, 0.95, 0.0]),
)
def test_gae_matches_backward_loop_and_closed_form(seed, B, T, gamma, lam):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = spans_mask(B, T, g)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    args = (rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    want = torch.tensor(ref_gae_loop(*args), dtype=torch.float64)
    assert torch.allclose(adv, want, atol=1e-12)
    assert torch.allclose(adv, torch.tensor(ref_gae_sum(*args), dtype=torch.float64), atol=1e-10)
    assert torch.allclose(ret, (want + values) * mask, atol=1e-12)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_gae_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 99.0]], dtype=torch.float64)  # the 99 is padding
    values = torch.tensor([[0.2, 0.5, 0.7, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.8, 0.5, 0.3, 0.0]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64), atol=1e-12)


def test_gae_has_no_grad():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.randn(2, 3), values, torch.ones(2, 3))
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- whiten


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_formula(shift_mean):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64) * 4 + 2
    mask = spans_mask(3, 6, g)
    mask[0, :3] = True
    vals = [x[b, t].item() for b in range(3) for t in range(6) if mask[b, t]]
    mean, var = statistics.fmean(vals), statistics.variance(vals)  # unbiased
    got = whiten(x, mask, shift_mean=shift_mean)
    for b in range(3):
        for t in range(6):
            want = (x[b, t].item() - mean) / math.sqrt(var + 1e-8) + (0 if shift_mean else mean)
            assert math.isclose(got[b, t].item(), want if mask[b, t] else 0.0, rel_tol=1e-12, abs_tol=1e-12)
    if shift_mean:
        active = got[mask]
        assert abs(active.mean().item()) < 1e-12 and math.isclose(active.var().item(), var / (var + 1e-8), rel_tol=1e-9)


def test_whiten_needs_two_active_positions():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.randn(2, 3), torch.tensor([[0, 1, 0], [0, 0, 0]]))


# ---------------------------------------------------------------- policy and value losses


def ref_policy(lp, old, adv, m, clip):
    total, n, n_clipped = 0.0, 0, 0
    for b in range(len(lp)):
        for t in range(len(lp[0])):
            if not m[b][t]:
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            l1 = -adv[b][t] * ratio
            l2 = -adv[b][t] * min(max(ratio, 1 - clip), 1 + clip)
            total += max(l1, l2)
            n_clipped += l2 > l1
            n += 1
    return total / n, n_clipped / n


def ref_value(v, old, ret, m, c):
    total, n, n_clipped = 0.0, 0, 0
    for b in range(len(v)):
        for t in range(len(v[0])):
            if not m[b][t]:
                continue
            v_clip = old[b][t] + min(max(v[b][t] - old[b][t], -c), c)
            l1 = (v[b][t] - ret[b][t]) ** 2
            l2 = (v_clip - ret[b][t]) ** 2
            total += max(l1, l2)
            n_clipped += l2 > l1
            n += 1
    return 0.5 * total / n, n_clipped / n


@pytest.mark.parametrize("clip", [0.1, 0.2])
def test_policy_loss_matches_loop(clip):
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    old = lp + (torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1) * 0.5
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = spans_mask(4, 6, g)
    mask[0, :4] = True
    loss, clipfrac = ppo_policy_loss(lp, old, adv, mask, clip=clip)
    want, want_frac = ref_policy(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), clip)
    assert math.isclose(loss.item(), want, rel_tol=1e-12)
    assert math.isclose(clipfrac.item(), want_frac, rel_tol=1e-12)
    assert 0 < want_frac < 1


def test_policy_gradient_zero_when_clipped_and_plain_at_ratio_one():
    lp = torch.tensor([[math.log(1.5), 0.0, math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 3, dtype=torch.float64)
    adv = torch.tensor([[2.0, 3.0, -1.0]], dtype=torch.float64)
    loss, clipfrac = ppo_policy_loss(lp, old, adv, torch.ones(1, 3), clip=0.2)
    loss.backward()
    assert lp.grad.tolist() == [[0.0, -1.0, 0.0]]  # d(-A*ratio)/dlogp = -A at ratio 1, /3 tokens
    assert math.isclose(clipfrac.item(), 2 / 3, rel_tol=1e-12)


@pytest.mark.parametrize("c", [0.1, 0.5])
def test_value_loss_matches_loop(c):
    g = torch.Generator().manual_seed(2)
    old = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = old + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.5
    ret = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = spans_mask(3, 5, g)
    mask[0] = True
    loss, clipfrac = ppo_value_loss(v, old, ret, mask, clip_value=c)
    want, want_frac = ref_value(v.tolist(), old.tolist(), ret.tolist(), mask.tolist(), c)
    assert math.isclose(loss.item(), want, rel_tol=1e-12)
    assert math.isclose(clipfrac.item(), want_frac, rel_tol=1e-12)
    assert 0 < want_frac < 1


def test_value_loss_gradient_unclipped_and_clipped():
    # token 0: V moved 0.1 (inside the clip) -> grad (V - R) / n; token 1: V moved 1.0 towards
    # a target beyond it, clipped term is larger -> no gradient.
    v = torch.tensor([[0.1, 1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 2, dtype=torch.float64)
    ret = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    loss, clipfrac = ppo_value_loss(v, old, ret, torch.ones(1, 2), clip_value=0.2)
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[(0.1 - 1.0) / 2, 0.0]], dtype=torch.float64), atol=1e-15)
    assert clipfrac.item() == 0.5
    assert math.isclose(loss.item(), 0.5 * (0.81 + 1.8**2) / 2, rel_tol=1e-12)
