"""sft_loss / sft_loss_sum against the explicit mean-NLL formula, and micro-batch accumulation."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.logprobs import token_logps
from minipost.losses import sft_loss, sft_loss_sum


def ref_nll_terms(logits, targets):
    """-log p(target) for each scored position, float64, in reading order."""
    L = logits.double().tolist()
    terms = []
    for b, row in enumerate(targets.tolist()):
        for t, y in enumerate(row):
            if y == -100:
                continue
            z = L[b][t]
            lse = math.log(sum(math.exp(v) for v in z))
            terms.append(lse - z[y])
    return terms


def make_batch(B, T, V, ignore_frac, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < ignore_frac] = -100
    return logits, targets


def test_sft_loss_is_mean_nll_over_scored_tokens():
    logits, targets = make_batch(3, 6, 9, 0.4, seed=0)
    terms = ref_nll_terms(logits, targets)
    got = sft_loss(logits, targets)
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), sum(terms) / len(terms), rel_tol=1e-6)
    # The same number as the shared log-prob helper gives.
    n = (targets != -100).sum()
    assert torch.allclose(got, -token_logps(logits, targets).sum() / n, atol=1e-6)


def test_sft_loss_sum_returns_sum_and_count():
    logits, targets = make_batch(2, 5, 7, 0.3, seed=1)
    terms = ref_nll_terms(logits, targets)
    summed, n = sft_loss_sum(logits.double(), targets)
    assert n.item() == len(terms)
    assert math.isclose(summed.item(), sum(terms), rel_tol=1e-12)


def test_bf16_logits_give_float32_loss():
    logits, targets = make_batch(2, 4, 8, 0.2, seed=2)
    lb = logits.bfloat16()
    got = sft_loss(lb, targets)
    terms = ref_nll_terms(lb, targets)
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), sum(terms) / len(terms), rel_tol=1e-6)


def test_nothing_scored_gives_zero_not_nan():
    logits, _ = make_batch(2, 3, 5, 0.0, seed=3)
    targets = torch.full((2, 3), -100)
    x = logits.clone().requires_grad_(True)
    loss = sft_loss(x, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(x.grad == 0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_micro=st.integers(2, 4))
def test_accumulated_micro_batches_equal_full_batch_mean(seed, n_micro):
    """Sum of (micro-batch summed NLL / total tokens) == full-batch sft_loss, value and grads."""
    B = 2 * n_micro
    logits, targets = make_batch(B, 5, 6, 0.5, seed)
    targets[0, 0] = 3  # at least one scored token
    x_full = logits.double().requires_grad_(True)
    full = sft_loss(x_full, targets)
    full.backward()

    x_acc = logits.double().requires_grad_(True)
    total = (targets != -100).sum()
    acc = 0.0
    for m in range(n_micro):
        rows = slice(2 * m, 2 * m + 2)
        summed, _ = sft_loss_sum(x_acc[rows], targets[rows])
        part = summed / total
        part.backward()  # one backward per micro-batch, as a training loop does
        acc += part.item()
    assert math.isclose(acc, full.item(), rel_tol=1e-12, abs_tol=1e-12)
    assert torch.allclose(x_acc.grad, x_full.grad, atol=1e-12)


def test_mean_of_micro_batch_means_is_not_the_token_mean():
    """Why sft_loss_sum exists: equal-weighting micro-batches with different token counts is biased."""
    logits, targets = make_batch(2, 6, 5, 0.0, seed=4)
    targets[1, 1:] = -100  # micro-batch 2 has one scored token, micro-batch 1 has six
    means = [sft_loss(logits[i : i + 1], targets[i : i + 1]).item() for i in range(2)]
    full = sft_loss(logits, targets).item()
    terms = ref_nll_terms(logits, targets)
    assert math.isclose(full, sum(terms) / 7, rel_tol=1e-6)
    assert not math.isclose(sum(means) / 2, full, rel_tol=1e-3)
