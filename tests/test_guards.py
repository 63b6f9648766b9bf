"""Non-finite guards: NaN injected into the loss, a gradient, the weights, the sampling
distribution and a metrics record is caught with the step and the quantity (guards.py)."""
import json
import math

import pytest
import torch

from minipost import guards
from minipost.config import preset
from minipost.guards import NonFiniteError
from minipost.model import GPT


def tiny_with_grads(seed=0):
    torch.manual_seed(seed)
    m = GPT(preset("tiny", vocab_size=97))
    loss = m(torch.randint(0, 97, (2, 8))).float().logsumexp(-1).mean()
    loss.backward()
    return m, loss


def test_finite_step_passes():
    m, loss = tiny_with_grads()
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    assert torch.isfinite(norm)
    assert guards.check_step(3, loss=loss.item(), grad_norm=norm) is None  # passes without raising


def test_nan_loss_names_step_and_quantity():
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 7; stopping without saving.*--lr") as e:
        guards.check_step(7, loss=float("nan"), grad_norm=1.0)
    assert (e.value.step, e.value.quantity) == (7, "loss")


def test_nan_gradient_with_finite_loss_is_caught_before_the_update():
    """Issue #16.2: the loss is finite, one gradient element is NaN; the norm that
    clip_grad_norm_ returns carries it, and the guard refuses the step."""
    m, loss = tiny_with_grads()
    assert math.isfinite(loss.item())
    m.layers[0].attn.q_proj.weight.grad[0, 0] = float("nan")
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    with pytest.raises(NonFiniteError, match=r"non-finite grad norm \(nan\) at step 12"):
        guards.check_step(12, loss=loss.item(), grad_norm=norm)


def test_inf_gradient_is_caught():
    m, loss = tiny_with_grads()
    m.norm.weight.grad[1] = float("inf")
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    with pytest.raises(NonFiniteError, match=r"grad norm \((inf|nan)\) at step 1"):
        guards.check_step(1, loss=loss.item(), grad_norm=norm)


def test_weights_check_names_the_tensor_and_counts():
    m, _ = tiny_with_grads()
    guards.check_tensors(dict(m.named_parameters()), 5)  # finite: no error
    with torch.no_grad():
        m.layers[1].mlp.down_proj.weight[:2, :3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"weights 'layers.1.mlp.down_proj.weight' \(6 of \d+ elements\).*"
                                             r"at step 5.*earlier checkpoint with a lower --lr"):
        guards.check_tensors(dict(m.named_parameters()), 5)


def test_integer_tensors_are_skipped():
    assert guards.check_tensors({"codes": torch.tensor([255], dtype=torch.uint8), "rng": torch.get_rng_state()}, 1) is None


@pytest.mark.parametrize("row", [[float("nan"), 0.5], [float("inf"), 0.0], [-0.1, 1.1], [0.0, 0.0]])
def test_sampling_probs_that_multinomial_rejects_are_caught(row):
    probs = torch.tensor([[0.25, 0.75], row])
    with pytest.raises(NonFiniteError, match=r"sampling probabilities \(rows \[1\]\).*lower --lr"):
        guards.check_sampling_probs(probs)
    with pytest.raises(RuntimeError):  # what the guard stands in front of
        torch.multinomial(probs, 1)


def test_sampling_probs_fine_and_step_added_later():
    guards.check_sampling_probs(torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
    try:
        guards.check_sampling_probs(torch.full((1, 3), float("nan")))
    except NonFiniteError as e:
        err = e.at(9)
    assert err.step == 9 and "at step 9" in str(err)
    assert err.at(10) is err  # a known step is kept


def test_json_record_is_strict_json():
    record = {"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3,
              "kl": torch.tensor(float("-inf")), "nested": {"x": [1.0, float("nan")]}}
    line = guards.json_record(record)
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3, "kl": None,
                                "nested": {"x": [1.0, None]}}
    # the plain json.dumps the log used before writes tokens that strict JSON readers reject
    with pytest.raises(ValueError):
        json.loads(json.dumps({"loss": float("nan")}), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
