"""Linear probe (peft/probe.py): pooled frozen features and a linear head, by hand."""
import copy

import pytest
import torch
import torch.nn.functional as F

from minipost.config import preset
from minipost.model import GPT
from minipost.peft import apply_probe, trainable_parameters

VOCAB = 97


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=VOCAB)).eval()


def padded(seqs, side):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_equals_manual_pooling_of_each_sequence_alone(pooling, side):
    probe = apply_probe(tiny(), n_classes=3, pooling=pooling)
    torch.manual_seed(1)
    with torch.no_grad():
        probe.head.weight.normal_()
        probe.head.bias.normal_()
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12], [13]]
    ids, mask = padded(seqs, side)
    got = probe(ids, mask)
    for i, s in enumerate(seqs):
        _, h = probe.model(torch.tensor([s]), return_hidden=True)  # the sequence alone, no pads
        h = h[0].double()
        feat = h.mean(0) if pooling == "mean" else h[-1]
        expected = feat @ probe.head.weight.double().T + probe.head.bias.double()
        torch.testing.assert_close(got[i].double(), expected, rtol=1e-5, atol=1e-5)


def test_zero_head_base_unchanged_only_head_trains():
    base = tiny()
    probe = apply_probe(copy.deepcopy(base), n_classes=5)
    ids = torch.randint(0, VOCAB, (4, 9))
    assert torch.equal(probe(ids), torch.zeros(4, 5))  # zero head: uniform class probabilities
    assert trainable_parameters(probe) == (64 * 5 + 5, base.num_parameters() + 64 * 5 + 5)
    opt = torch.optim.SGD([p for p in probe.parameters() if p.requires_grad], lr=0.5)
    loss = F.cross_entropy(probe(ids), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert probe.head.weight.abs().sum() > 0
    for (n, p), (_, p0) in zip(probe.model.named_parameters(), base.named_parameters()):
        assert torch.equal(p, p0) and p.grad is None, n
    assert torch.equal(probe.model(ids), base(ids))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        apply_probe(tiny(), 3, pooling="max")
    with pytest.raises(ValueError, match="real token"):
        apply_probe(tiny(), 3)(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3))
