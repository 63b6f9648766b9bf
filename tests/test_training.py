"""The optimizer's weight-decay groups, the token-embedding init and the learning-rate schedules."""
import math

import pytest
import torch

from minipost.config import preset
from minipost.model import GPT
from minipost.training import lr_at, make_optimizer


def test_weight_decay_on_matrices_not_on_vectors():
    model = GPT(preset("tiny", vocab_size=97))
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert set(decay_of) == {id(p) for p in params.values()}  # each parameter exactly once
    for name, p in params.items():
        assert decay_of[id(p)] == (0.1 if p.dim() >= 2 else 0.0), name
    # One AdamW step with zero gradients: only decoupled decay moves the weights.
    before = {n: p.detach().clone() for n, p in params.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    wq, norm = "layers.0.attn.q_proj.weight", "layers.0.attn_norm.weight"
    torch.testing.assert_close(params[wq], before[wq] * (1 - 1e-3 * 0.1))
    assert torch.equal(params[norm], before[norm])


def test_token_embeddings_start_with_unit_norm_rows():
    # std 1/sqrt(d_model) per entry: each row's squared norm has mean 1 (model.py says why).
    torch.manual_seed(0)
    cfg = preset("small", vocab_size=3072)
    emb = GPT(cfg).tok_emb.weight.detach().double()
    assert emb.std().item() == pytest.approx(cfg.d_model ** -0.5, rel=0.01)
    assert (emb ** 2).sum(-1).mean().item() == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("step", [0, 4, 9, 10, 55, 99])
def test_rewarm_schedule_matches_formula(step):
    peak, warmup, total, floor = 2e-3, 10, 100, 0.1
    if step < warmup:
        expected = peak * (step + 1) / warmup
    else:
        t = (step - warmup) / (total - warmup)
        expected = floor * peak + (peak - floor * peak) * (1 + math.cos(math.pi * t)) / 2
    assert lr_at(step, total, peak, warmup, "rewarm", floor) == pytest.approx(expected, rel=1e-12)
    assert lr_at(step, total, peak, warmup, "constant") == peak
    t = step / total
    assert lr_at(step, total, peak, warmup, "cosine", floor) == pytest.approx(
        floor * peak + (peak - floor * peak) * (1 + math.cos(math.pi * t)) / 2, rel=1e-12)
