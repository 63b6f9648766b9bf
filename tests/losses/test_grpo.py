"""group_advantages, k3_kl and grpo_loss against explicit loops in float64, plus properties."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.losses import grpo_loss, group_advantages, k3_kl


def ref_group_advantages(rewards, G, scale, eps):
    out = []
    all_std = statistics.stdev(rewards)  # unbiased (n - 1)
    for g in range(0, len(rewards), G):
        group = rewards[g : g + G]
        mean = statistics.fmean(group)
        std = statistics.stdev(group)
        for r in group:
            if scale == "group":
                out.append((r - mean) / (std + eps))
            elif scale == "batch":
                out.append((r - mean) / (all_std + eps))
            else:
                out.append(r - mean)
    return out


def ref_grpo(logps, old, adv, mask, ref, beta, eps_low, eps_high, loss_type, max_len):
    """Returns (loss, kl_mean, clip_ratio), one token at a time."""
    B, T = len(logps), len(logps[0])
    per_seq_means, total, n_active, kl_sum, n_clipped = [], 0.0, 0, 0.0, 0
    for b in range(B):
        seq_sum, seq_n = 0.0, 0
        for t in range(T):
            if not mask[b][t]:
                continue
            ratio = math.exp(logps[b][t] - old[b][t])
            a = adv[b]
            unclipped = ratio * a
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high) * a
            obj = min(unclipped, clipped)
            n_clipped += obj != unclipped
            loss_t = -obj
            if ref is not None:
                d = ref[b][t] - logps[b][t]
                kl = math.exp(d) - d - 1
                kl_sum += kl
                loss_t += beta * kl
            seq_sum += loss_t
            seq_n += 1
        per_seq_means.append(seq_sum / seq_n if seq_n else 0.0)
        total += seq_sum
        n_active += seq_n
    if loss_type == "grpo":
        loss = sum(per_seq_means) / B
    elif loss_type == "bnpo":
        loss = total / max(n_active, 1)
    else:
        loss = total / (B * max_len)
    return loss, kl_sum / max(n_active, 1), n_clipped / max(n_active, 1)


# ---------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_loop(scale):
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.25, 3.0, -2.0, 0.0, 0.0, 0.0, 1.0]
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4, scale=scale, eps=1e-4)
    want = ref_group_advantages(rewards, 4, scale, 1e-4)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_identical_rewards_give_zero_advantage():
    got = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3)
    assert got[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(got).all() and got.dtype == torch.float32


@settings(max_examples=50, deadline=None)
@given(
    G=st.integers(2, 6),
    n_groups=st.integers(1, 4),
    data=st.data(),
    scale=st.sampled_from(["group", "none"]),
)
def test_group_advantages_have_zero_mean_per_group(G, n_groups, data, scale):
    rewards = data.draw(st.lists(st.floats(-10, 10), min_size=G * n_groups, max_size=G * n_groups))
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), G, scale=scale)
    assert torch.allclose(adv.view(n_groups, G).sum(1), torch.zeros(n_groups, dtype=torch.float64), atol=1e-9)
    want = ref_group_advantages(rewards, G, scale, 1e-4)
    assert torch.allclose(adv, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_group_advantages_validate():
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


# ---------------------------------------------------------------- k3 KL


@settings(max_examples=100, deadline=None)
@given(
    x=st.floats(-20, 20),
    y=st.floats(-20, 20),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_k3_is_nonnegative_and_zero_at_equality(x, y, dtype):
    lp, ref = torch.tensor([x], dtype=dtype), torch.tensor([y], dtype=dtype)
    kl = k3_kl(lp, ref)
    assert kl.item() >= 0.0
    assert k3_kl(lp, lp.clone()).item() == 0.0
    d = float(ref.double() - lp.double())
    assert math.isclose(kl.item(), math.expm1(d) - d, rel_tol=1e-5 if dtype == torch.float32 else 1e-12, abs_tol=1e-12)


def test_k3_tiny_differences_stay_nonnegative_in_float32():
    lp = torch.zeros(5)
    ref = torch.tensor([5e-8, -5e-8, 1e-7, 3e-8, -1e-7])
    assert (k3_kl(lp, ref) >= 0).all()


# ---------------------------------------------------------------- grpo_loss


def make_rollout(B, T, seed, spread=0.6, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # old differs by up to +-spread so ratios land on both sides of both clip bounds
    old = logps + (torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 1) * spread
    ref = logps + (torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 1) * spread
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty_row:
        lengths[-1] = 0
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta,use_ref", [(0.0, False), (0.0, True), (0.04, True)])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_grpo_loss_matches_loop(loss_type, beta, use_ref, eps_high):
    logps, old, ref, adv, mask = make_rollout(6, 7, seed=0)
    max_len = 10 if loss_type == "dr_grpo" else None
    loss, stats = grpo_loss(
        logps, old, adv, mask, ref_logps=ref if use_ref else None, beta=beta,
        epsilon=0.2, epsilon_high=eps_high, loss_type=loss_type, max_completion_length=max_len,
    )
    want, want_kl, want_clip = ref_grpo(
        logps.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist() if use_ref else None,
        beta, 0.2, 0.2 if eps_high is None else eps_high, loss_type, max_len or 7,
    )
    assert math.isclose(loss.item(), want, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(stats["kl"].item(), want_kl, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(stats["clip_ratio"].item(), want_clip, rel_tol=1e-12)
    assert 0 < want_clip < 1  # the rollout exercises both clipped and unclipped tokens
    assert math.isclose(
        stats["clip_ratio_low"].item() + stats["clip_ratio_high"].item(), want_clip, rel_tol=1e-12
    )
    assert all(not v.requires_grad for v in stats.values())


def test_dr_grpo_defaults_to_T():
    logps, old, ref, adv, mask = make_rollout(4, 5, seed=1)
    a, _ = grpo_loss(logps, old, adv, mask, loss_type="dr_grpo")
    b, _ = grpo_loss(logps, old, adv, mask, loss_type="dr_grpo", max_completion_length=5)
    assert a.item() == b.item()


def test_clipped_tokens_get_no_gradient():
    # A > 0 with ratio above 1 + eps, and A < 0 with ratio below 1 - eps: both clipped.
    logps = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, stats = grpo_loss(logps, old, adv, mask, loss_type="bnpo")
    loss.backward()
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[1, 0].item() == 0.0
    # the unclipped tokens (ratio 1) get -A / n_tokens
    assert math.isclose(logps.grad[0, 1].item(), -1.0 / 4, rel_tol=1e-12)
    assert math.isclose(logps.grad[1, 1].item(), 1.0 / 4, rel_tol=1e-12)
    assert stats["clip_ratio"].item() == 0.5


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), loss_type=st.sampled_from(["grpo", "bnpo", "dr_grpo"]))
def test_on_policy_gradient_equals_plain_policy_gradient(seed, loss_type):
    """old == new: clipped loss has the gradient of -A * logp, aggregated the same way."""
    logps, _, _, adv, mask = make_rollout(5, 6, seed, empty_row=False)
    x1 = logps.clone().requires_grad_(True)
    loss, _ = grpo_loss(x1, x1.detach(), adv, mask, loss_type=loss_type)
    loss.backward()

    x2 = logps.clone().requires_grad_(True)
    pg = -adv.unsqueeze(1) * x2 * mask
    if loss_type == "grpo":
        plain = (pg.sum(1) / mask.sum(1)).mean()
    elif loss_type == "bnpo":
        plain = pg.sum() / mask.sum()
    else:
        plain = pg.sum() / (5 * 6)
    plain.backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)


def test_kl_gradient_and_float32_mask():
    # beta * k3 adds beta * (1 - exp(ref - logp)) / n to d loss / d logp (bnpo, old == new, A = 0)
    logps = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # a 0/1 float mask works like a bool one
    loss, stats = grpo_loss(logps, logps.detach(), torch.zeros(1, dtype=torch.float64), mask,
                            ref_logps=ref, beta=0.5, loss_type="bnpo")
    loss.backward()
    for t in range(2):
        d = ref[0, t].item() - logps[0, t].item()
        assert math.isclose(logps.grad[0, t].item(), 0.5 * (1 - math.exp(d)) / 2, rel_tol=1e-12)
    assert logps.grad[0, 2].item() == 0.0
    want_kl = sum(math.exp(d) - d - 1 for d in (-0.5, 1.0)) / 2
    assert math.isclose(stats["kl"].item(), want_kl, rel_tol=1e-12)


def test_grpo_loss_validates():
    logps, old, ref, adv, mask = make_rollout(3, 4, seed=2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, old, adv, mask, loss_type="dapo2")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, old, adv[:2], mask)
    with pytest.raises(ValueError, match="same shape"):
        grpo_loss(logps, old[:, :3], adv, mask)
