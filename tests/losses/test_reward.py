"""reward_loss against the Bradley-Terry formula (with margin and centering) in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.losses import reward_loss


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_reward_loss(rc, rr, margin, center_coef):
    B = len(rc)
    m = margin if margin is not None else [0.0] * B
    bt = sum(-log_sigmoid(rc[i] - rr[i] - m[i]) for i in range(B)) / B
    center = sum((rc[i] + rr[i]) ** 2 for i in range(B)) / B
    return bt + center_coef * center


finite = st.floats(-30, 30)


@settings(max_examples=60, deadline=None)
@given(
    rc=st.lists(finite, min_size=1, max_size=8),
    data=st.data(),
    use_margin=st.booleans(),
    center_coef=st.sampled_from([0.0, 0.01, 1.0]),
)
def test_matches_formula(rc, data, use_margin, center_coef):
    B = len(rc)
    rr = data.draw(st.lists(finite, min_size=B, max_size=B))
    margin = data.draw(st.lists(st.floats(0, 5), min_size=B, max_size=B)) if use_margin else None
    got = reward_loss(
        torch.tensor(rc, dtype=torch.float64),
        torch.tensor(rr, dtype=torch.float64),
        None if margin is None else torch.tensor(margin, dtype=torch.float64),
        center_coef=center_coef,
    )
    assert math.isclose(got.item(), ref_reward_loss(rc, rr, margin, center_coef), rel_tol=1e-10, abs_tol=1e-12)


def test_equal_rewards_give_log2_and_margin_raises_loss():
    r = torch.tensor([0.3, -1.2, 4.0])
    assert math.isclose(reward_loss(r, r).item(), math.log(2), rel_tol=1e-6)
    with_margin = reward_loss(r + 1.0, r, margin=torch.ones(3))
    assert math.isclose(with_margin.item(), math.log(2), rel_tol=1e-6)
    assert reward_loss(r + 1.0, r, margin=torch.full((3,), 2.0)).item() > reward_loss(r + 1.0, r).item()


def test_gradient_matches_formula():
    # d/d r_c of -log sigmoid(r_c - r_r) = -sigmoid(r_r - r_c), divided by B for the mean;
    # the centering term adds center_coef * 2 (r_c + r_r) / B.
    rc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    reward_loss(rc, rr, center_coef=0.1).backward()
    for i in range(3):
        c, r = rc[i].item(), rr[i].item()
        s = 1 / (1 + math.exp(c - r))  # sigmoid(r_r - r_c)
        assert math.isclose(rc.grad[i].item(), (-s + 0.2 * (c + r)) / 3, rel_tol=1e-12)
        assert math.isclose(rr.grad[i].item(), (s + 0.2 * (c + r)) / 3, rel_tol=1e-12)


def test_finite_for_huge_gaps():
    rc = torch.tensor([1e4, -1e4], requires_grad=True)
    rr = torch.zeros(2)
    loss = reward_loss(rc, rr)
    loss.backward()
    assert math.isclose(loss.item(), 1e4 / 2, rel_tol=1e-6)
    assert torch.isfinite(rc.grad).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        reward_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        reward_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))
