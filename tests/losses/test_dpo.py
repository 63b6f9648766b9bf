"""dpo_loss against the papers' formulas written out in float64, plus properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.losses import dpo_loss


def log_sigmoid(x):
    # log(1 / (1 + exp(-x))), written so neither branch overflows
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return math.exp(log_sigmoid(x))


def ref_loss(pc, pr, rc, rr, beta, loss_type, eps):
    delta = (pc - rc) - (pr - rr)
    z = beta * delta
    if loss_type == "sigmoid":
        return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    if loss_type == "robust":
        return (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return max(0.0, 1 - z)
    raise AssertionError(loss_type)


def batch(B, seed, scale=5.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(-scale * torch.rand(B, generator=g, dtype=torch.float64) * 10).to(dtype) for _ in range(4)]


@pytest.mark.parametrize(
    "loss_type,eps",
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.5), ("robust", 0.0), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)],
)
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_losses_and_rewards_match_formulas(loss_type, eps, beta):
    pc, pr, rc, rr = batch(16, seed=0)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    want = [ref_loss(*v, beta, loss_type, eps) for v in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    assert losses.shape == (16,)
    assert torch.allclose(losses, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.allclose(cr, beta * (pc - rc), rtol=0, atol=1e-12)
    assert torch.allclose(rj, beta * (pr - rr), rtol=0, atol=1e-12)


def test_hinge_covers_both_branches():
    # beta*delta = 2 (flat part, loss 0) and beta*delta = -1 (linear part, loss 2)
    z = torch.zeros(2, dtype=torch.float64)
    pc = torch.tensor([2.0, -1.0], dtype=torch.float64)
    losses, _, _ = dpo_loss(pc, z, z, z, beta=1.0, loss_type="hinge")
    assert losses.tolist() == [0.0, 2.0]


def test_rewards_are_detached_and_losses_float32():
    pc, pr, rc, rr = (t.float().requires_grad_(True) for t in batch(4, seed=1))
    losses, cr, rj = dpo_loss(pc, pr, rc, rr)
    assert losses.dtype == torch.float32 and losses.requires_grad
    assert not cr.requires_grad and not rj.requires_grad


@settings(max_examples=60, deadline=None)
@given(
    vals=st.lists(st.floats(-50, 0), min_size=4, max_size=4),
    beta=st.floats(0.01, 2.0),
)
def test_swapping_chosen_and_rejected_gives_loss_at_minus_delta(vals, beta):
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in vals)
    delta = (vals[0] - vals[2]) - (vals[1] - vals[3])
    swapped, _, _ = dpo_loss(pr, pc, rr, rc, beta=beta)
    assert math.isclose(swapped.item(), -log_sigmoid(-beta * delta), rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=30, deadline=None)
@given(vals=st.lists(st.floats(-200, 0, width=32), min_size=2, max_size=8), beta=st.floats(0.01, 2.0))
def test_policy_equal_to_reference_gives_log2_and_zero_rewards(vals, beta):
    pc = torch.tensor(vals, dtype=torch.float32)
    pr = pc.flip(0)
    losses, cr, rj = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta)
    assert torch.all(losses == torch.tensor(math.log(2), dtype=torch.float32))
    assert torch.all(cr == 0) and torch.all(rj == 0)


@settings(max_examples=60, deadline=None)
@given(delta=st.floats(-100, 100), beta=st.floats(0.01, 5.0))
def test_gradient_wrt_delta_is_minus_beta_sigmoid(delta, beta):
    # delta enters through policy_chosen_logps, where d delta / d pc = 1
    pc = torch.tensor([delta], dtype=torch.float64, requires_grad=True)
    z = torch.zeros(1, dtype=torch.float64)
    losses, _, _ = dpo_loss(pc, z, z, z, beta=beta)
    losses.sum().backward()
    want = -beta * sigmoid(-beta * delta)
    assert math.isclose(pc.grad.item(), want, rel_tol=1e-9, abs_tol=1e-300)


@pytest.mark.parametrize(
    "loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.3), ("ipo", 0.0), ("hinge", 0.0)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_for_huge_margins(loss_type, eps, dtype):
    beta = 0.1
    bd = torch.tensor([-1e4, -1e3, -30.0, 0.0, 30.0, 1e3, 1e4], dtype=dtype)  # beta * delta
    pc = (bd / beta).requires_grad_(True)
    z = torch.zeros_like(pc)
    losses, cr, rj = dpo_loss(pc, z, z, z, beta=beta, loss_type=loss_type, label_smoothing=eps)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all()
    assert torch.isfinite(cr).all() and torch.isfinite(rj).all()
    want = [ref_loss(v / beta, 0.0, 0.0, 0.0, beta, loss_type, eps) for v in bd.tolist()]
    assert torch.allclose(losses.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6)


def test_bad_arguments_raise():
    pc, pr, rc, rr = batch(3, seed=2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(pc, pr, rc, rr, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(pc, pr, rc, rr, loss_type="sigmoid", label_smoothing=0.7)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(pc, pr[:2], rc, rr)
