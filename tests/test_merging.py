"""minipost/merging.py against results worked out by hand, plus exactness and hypothesis properties."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.merging import (check_compatible, elect_and_merge, linear_merge, task_arithmetic, ties_merge, trim,
                              wise_ft)


def sd(*values):
    """A one-tensor state dict {"w": float32 tensor}."""
    return {"w": torch.tensor(values, dtype=torch.float32)}


def random_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.weight": torch.randn(5, generator=g)}


# ----------------------------------------------------------------------------- linear / WiSE-FT

def test_linear_merge_by_hand():
    # 0.25 * [1, 2] + 0.75 * [3, 6] = [0.25 + 2.25, 0.5 + 4.5]
    out = linear_merge([sd(1, 2), sd(3, 6)], [0.25, 0.75])
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert out["w"].dtype == torch.float32


def test_wise_ft_by_hand_and_exact_at_the_ends():
    base, ft = random_state(0), random_state(1)
    # (1 - 0.5) * 2 + 0.5 * 4 = 3
    assert torch.equal(wise_ft(sd(2, -2), sd(4, 0), 0.5)["w"], torch.tensor([3.0, -1.0]))
    for key in base:
        assert torch.equal(wise_ft(base, ft, 0.0)[key], base[key])
        assert torch.equal(wise_ft(base, ft, 1.0)[key], ft[key])
        assert torch.equal(linear_merge([base, ft], [1.0, 0.0])[key], base[key])
        assert torch.equal(linear_merge([base, ft], [0.0, 1.0])[key], ft[key])


def test_linear_merge_refuses_weights_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        linear_merge([sd(1.0), sd(2.0)], [0.5, 0.6])
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        linear_merge([sd(1.0)] * 3, [0.5, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        wise_ft(sd(1.0), sd(2.0), 1.5)


# ----------------------------------------------------------------------------- task arithmetic

def test_task_arithmetic_by_hand():
    # tau_1 = [3, 2] - [1, 2] = [2, 0]; tau_2 = [1, -2] - [1, 2] = [0, -4]
    # sum w tau = 1 * [2, 0] + 0.5 * [0, -4] = [2, -2]; theta = [1, 2] + 0.5 * [2, -2] = [2, 1]
    out = task_arithmetic(sd(1, 2), [sd(3, 2), sd(1, -2)], weights=[1.0, 0.5], scale=0.5)
    assert torch.equal(out["w"], torch.tensor([2.0, 1.0]))


# ----------------------------------------------------------------------------- TIES

def test_trim_keeps_the_largest_magnitudes_and_breaks_ties_by_position():
    assert torch.equal(trim(torch.tensor([4.0, -1.0, 0.5, 2.0, -3.0, 0.1]), 0.5),
                       torch.tensor([4.0, 0.0, 0.0, 2.0, -3.0, 0.0]))
    # |1| = |-1| = |1|: k = 2 keeps the first two
    assert torch.equal(trim(torch.tensor([1.0, -1.0, 1.0, 0.5]), 0.5), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # k = round(0.2 * 6) = 1, shape kept
    assert torch.equal(trim(torch.tensor([[1.0, -7.0, 2.0], [3.0, 0.0, -5.0]]), 0.2),
                       torch.tensor([[0.0, -7.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="density"):
        trim(torch.ones(3), 0.0)


def test_ties_by_hand():
    base = sd(1, 1, 1, 1, 1, 1)
    tau1 = [4, -1, 0.5, 2, -3, 0.1]    # trimmed (k = 3): [ 4,  0, 0,  2, -3, 0]
    tau2 = [2, -5, 0.2, -1, -2, 0.3]   # trimmed:         [ 2, -5, 0,  0, -2, 0]
    tau3 = [-1, 3, 0.4, -6, 0.5, 0.25]  # trimmed:        [-1,  3, 0, -6,  0, 0]
    # summed:         [5, -2, 0, -4, -5, 0] -> elected signs [+, -, 0, -, -, 0]
    # agreeing means: [(4 + 2) / 2, -5, none, -6, (-3 - 2) / 2, none] = [3, -5, 0, -6, -2.5, 0]
    models = [sd(*(1 + t for t in tau)) for tau in (tau1, tau2, tau3)]
    out = ties_merge(base, models, density=0.5)
    assert torch.equal(out["w"], torch.tensor([4.0, -4.0, 1.0, -5.0, -1.5, 1.0]))
    # lambda = 0.5: 1 + 0.5 * [3, -5, 0, -6, -2.5, 0]
    out = ties_merge(base, models, density=0.5, scale=0.5)
    assert torch.equal(out["w"], torch.tensor([2.5, -1.5, 1.0, -2.0, -0.25, 1.0]))


def test_ties_weights_scale_the_task_vectors_before_trimming():
    # w = [1, 3]: tau_2 = 3 * [-1, 1] = [-3, 3]; density 1 keeps everything.
    # sums [2 - 3, 0 + 3] = [-1, 3] -> signs [-, +]; means [-3, 3]
    out = ties_merge(sd(0, 0), [sd(2, 0), sd(-1, 1)], weights=[1.0, 3.0], density=1.0)
    assert torch.equal(out["w"], torch.tensor([-3.0, 3.0]))


# ----------------------------------------------------------------------------- identities

@pytest.mark.parametrize("merge", [
    lambda s: linear_merge([s, s, s], [0.2, 0.3, 0.5]),
    lambda s: task_arithmetic(s, [s, s], weights=[0.7, 0.9], scale=0.8),
    lambda s: ties_merge(s, [s, s], density=0.2, scale=1.3),
])
def test_merging_a_model_with_itself_is_the_identity(merge):
    state = random_state(3)
    out = merge(state)
    assert all(torch.equal(out[k], state[k]) for k in state)


def test_mismatched_models_are_refused_with_the_key_named():
    a, b = random_state(0), random_state(1)
    b["b.weight"] = torch.zeros(6)
    with pytest.raises(ValueError, match=r"B: b.weight has shape \(6,\), A has \(5,\)"):
        check_compatible([a, b], ["A", "B"])
    c = dict(random_state(2))
    del c["a.weight"]
    with pytest.raises(ValueError, match=r"model 1: tensor names differ.*missing \['a.weight'\]"):
        linear_merge([a, c], [0.5, 0.5])
    with pytest.raises(ValueError, match="floating-point"):
        check_compatible([{"n": torch.tensor([1])}])


# ----------------------------------------------------------------------------- properties

floats = st.floats(-4, 4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(floats, min_size=5, max_size=5), min_size=1, max_size=4), st.sampled_from([0.2, 0.4, 1.0]))
def test_ties_merged_entry_lies_between_the_agreeing_trimmed_entries(taus, density):
    trimmed = [trim(torch.tensor(t, dtype=torch.float64), density) for t in taus]
    merged = elect_and_merge(trimmed)
    stacked = torch.stack(trimmed)
    elected = torch.sign(stacked.sum(0))
    for p in range(5):
        agreeing = [t[p].item() for t in trimmed if t[p] != 0 and torch.sign(t[p]) == elected[p]]
        if agreeing:
            assert min(agreeing) - 1e-12 <= merged[p].item() <= max(agreeing) + 1e-12
            assert merged[p].item() == pytest.approx(sum(agreeing) / len(agreeing), abs=1e-12)
        else:
            assert merged[p].item() == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=12), st.floats(0.05, 1.0))
def test_trim_matches_a_sorted_loop(values, density):
    k = round(density * len(values))
    order = sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))  # largest first, earlier wins
    expected = [values[i] if i in order[:k] else 0.0 for i in range(len(values))]
    assert trim(torch.tensor(values, dtype=torch.float64), density).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000))
def test_ties_with_one_model_and_full_density_gives_it_back(seed):
    base, model = random_state(seed), random_state(seed + 1)
    out = ties_merge(base, [model], density=1.0)
    assert all(torch.equal(out[k], model[k]) for k in base)
