"""value_head.py against explicit index loops and a float64 dot product."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.value_head import ValueHead, last_index


def head_by_hand(head, vector):
    """w . h + b in float64, one vector at a time."""
    w = head.proj.weight.detach().double()[0]
    return float((w * vector.double()).sum() + head.proj.bias.detach().double()[0])


def test_score_last_with_lengths_matches_index_loop():
    torch.manual_seed(0)
    head = ValueHead(8)
    hidden = torch.randn(4, 6, 8)
    lengths = torch.tensor([6, 1, 3, 5])
    got = head.score_last(hidden, lengths=lengths)
    for b in range(4):
        assert got[b].item() == pytest.approx(head_by_hand(head, hidden[b, lengths[b] - 1]), abs=1e-6)
    assert got.dtype == torch.float32 and got.shape == (4,)


def test_score_last_without_lengths_reads_the_last_column():
    torch.manual_seed(1)
    head = ValueHead(8)
    hidden = torch.randn(3, 5, 8)
    # no lengths: no padding, the last column
    got = head.score_last(hidden)
    for b in range(3):
        assert got[b].item() == pytest.approx(head_by_hand(head, hidden[b, -1]), abs=1e-6)


def test_values_per_position_match_loop():
    torch.manual_seed(2)
    head = ValueHead(4)
    hidden = torch.randn(2, 3, 4)
    v = head.values(hidden)
    assert v.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            assert v[b, t].item() == pytest.approx(head_by_hand(head, hidden[b, t]), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=5), st.integers(0, 10_000))
def test_score_last_ignores_whatever_sits_in_the_padding(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    head = ValueHead(4)
    hidden = torch.randn(len(lengths), 7, 4, generator=g)
    lengths = torch.tensor(lengths)
    noisy = hidden.clone()
    for b, n in enumerate(lengths.tolist()):
        noisy[b, n:] = torch.randn(7 - n, 4, generator=g) * 100
    assert torch.equal(head.score_last(hidden, lengths=lengths), head.score_last(noisy, lengths=lengths))
    assert torch.equal(last_index((len(lengths), 7), lengths), lengths - 1)


def test_last_index_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths must lie"):
        last_index((1, 3), lengths=torch.tensor([4]))
    with pytest.raises(ValueError, match="lengths must lie"):
        last_index((2, 3), lengths=torch.tensor([1, 0]))


def test_init_scale_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(3)
    head = ValueHead(400)
    std = head.proj.weight.std().item()
    assert std == pytest.approx(1 / math.sqrt(401), rel=0.15)
    assert head.proj.bias.item() == 0.0
    head.save(tmp_path / "h.safetensors")
    loaded = ValueHead.load(tmp_path / "h.safetensors")
    assert torch.equal(loaded.proj.weight, head.proj.weight) and torch.equal(loaded.proj.bias, head.proj.bias)


@settings(max_examples=15, deadline=None)
@given(spec=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_reward_model_on_pairs_runs_each_prompt_once_with_the_same_rewards(spec, seed):
    """RewardModel(pairs=True) (each pair's shared prompt run once, logprobs.pair_hidden_states)
    gives the rewards and gradients of the plain pass over all 2B rows, in float64, for
    prompts of 1-6 tokens and replies of 1-5 that may begin alike or be equal."""
    from minipost.config import preset
    from minipost.model import GPT
    from minipost.value_head import RewardModel

    g = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(1, 4, (n,), generator=g).tolist()  # noqa: E731
    pairs = [(tokens(p), tokens(c), tokens(r)) for p, c, r in spec]
    seqs = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    W = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (W - len(s)) for s in seqs])
    lengths = torch.tensor([len(s) for s in seqs])
    torch.manual_seed(0)
    rm = RewardModel(GPT(preset("tiny", 50))).double()
    params = [p for p in rm.parameters() if p.requires_grad]
    plain, shared = rm(ids, lengths), rm(ids, lengths, pairs=True)
    torch.testing.assert_close(shared, plain, rtol=1e-10, atol=1e-10)
    weights = torch.randn(plain.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((shared * weights).sum(), params), torch.autograd.grad((plain * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
