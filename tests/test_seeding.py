"""minipost.seeding: the one rule every draw follows, and the draws that use it."""
import hashlib

import torch
from hypothesis import given
from hypothesis import strategies as st

from minipost.packing import batches, epoch_order, pair_indices
from minipost.seeding import derive, rng


def test_derive_is_the_documented_hash():
    digest = hashlib.sha256(repr((1234, "epoch", 3)).encode()).digest()
    assert derive(1234, "epoch", 3) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert 0 <= derive(1234, "epoch", 3) < 2**63


@given(seed=st.integers(0, 10**6), a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_keys_name_distinct_draws(seed, a, b):
    if a != b:
        assert derive(seed, "prompts", a) != derive(seed, "prompts", b)
    assert derive(seed, "prompts", a) != derive(seed, "sampling", a)
    # what arithmetic seeding (seed * 1_000_003 + step) would confuse
    assert derive(seed, "x", a + 1_000_003) != derive(seed + 1, "x", a)


def test_rng_reproduces_its_stream():
    assert torch.equal(torch.rand(5, generator=rng(7, "a", 1)), torch.rand(5, generator=rng(7, "a", 1)))
    assert not torch.equal(torch.rand(5, generator=rng(7, "a", 1)), torch.rand(5, generator=rng(7, "a", 2)))


def test_batches_and_pair_indices_share_the_epoch_order():
    rows = {"x": torch.arange(10)}
    order = list(epoch_order(10, 5, 2))
    assert sorted(order) == list(range(10))
    assert order == torch.randperm(10, generator=rng(5, "epoch", 2)).tolist()
    got = [i for b in batches(rows, 4, seed=5, epoch=2) for i in b["x"].tolist()]
    assert got == order
    # pair_indices walks the same orders, epoch after epoch: draw 5 of 4 items = items 20..23 = epoch 2
    assert pair_indices(10, 4, seed=5, draw=5) == order[:4]
