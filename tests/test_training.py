"""The optimizer's weight-decay groups, the token-embedding init and the learning-rate schedules."""
import json
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


# ---- the loop helpers: ItemWeighted, clip_and_step, Progress ----------------------------------

import argparse  # noqa: E402

from minipost.training import ItemWeighted, NonFiniteLoss, Progress, clip_and_step  # noqa: E402


def test_item_weighted_gradient_is_the_mean_over_all_items():
    # Two micro-batches of 3 and 1 items: the mean over the 4 items, not the mean of the two means.
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    xs = [torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]), torch.tensor([[4.0, 4.0]])]
    acc = ItemWeighted([len(x) for x in xs])
    assert acc.total == 4
    for x in xs:
        per_item = (x @ w) ** 2
        acc.backward(per_item.sum(), {"n_pos": (per_item > 1).sum()})
    # By hand: the items' values x.w = -1.5, 1.5, -1.0, -2.0; loss = mean of squares.
    values = [1.0 * 0.5 - 2.0, 3.0 * 0.5, -1.0, 4.0 * 0.5 - 4.0]
    rows = [[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [4.0, 4.0]]
    grad = [sum(2 * v * r[k] for v, r in zip(values, rows)) / 4 for k in range(2)]
    assert w.grad.tolist() == pytest.approx(grad, rel=1e-6)
    result = acc.result()
    assert result["loss"] == pytest.approx(sum(v * v for v in values) / 4, rel=1e-6)
    assert result["n_pos"] == pytest.approx(3 / 4)  # 2.25, 2.25, 4.0 are > 1; 1.0 is not


def test_clip_and_step_refuses_a_non_finite_loss():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.full((3,), 2.0)
    with pytest.raises(NonFiniteLoss, match="step 5"):
        clip_and_step(opt, float("nan"), step=4)
    assert torch.equal(p.detach(), torch.ones(3))  # nothing moved
    # A finite loss: the norm before clipping is returned and the step uses the clipped gradient.
    norm = clip_and_step(opt, 1.0, step=4, max_norm=1.0)
    assert norm == pytest.approx(math.sqrt(12.0))
    assert p.detach().tolist() == pytest.approx([1 - 0.1 * 2 / math.sqrt(12.0)] * 3, rel=1e-6)
    assert p.grad is None


def progress_args(tmp_path, **kw):
    base = dict(out=tmp_path, resume=False, steps=5, stage="test", log_every=1, eval_every=0, save_every=0,
                interrupt_at=None)
    return argparse.Namespace(**{**base, **kw})


def test_progress_saves_the_finished_steps_on_ctrl_c(tmp_path):
    saved = []
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(SystemExit) as stop:
        with Progress(progress_args(tmp_path), 0, saved.append, opt) as progress:
            for step in range(5):
                if step == 3:
                    p.grad = torch.ones(1)  # a step cut short: its partial gradient is dropped
                    raise KeyboardInterrupt
                progress.log(step, {"loss": 1.0 / (step + 1)})
    assert stop.value.code == 130 and saved == [3] and p.grad is None
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_progress_interrupt_at_and_save_every(tmp_path):
    saved = []
    with pytest.raises(SystemExit):
        with Progress(progress_args(tmp_path, save_every=2, interrupt_at=3), 0, saved.append) as progress:
            for step in range(5):
                progress.log(step, {"loss": 0.5})
    assert saved == [2, 3]  # every 2 steps, then the interrupt after step 3
