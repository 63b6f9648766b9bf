"""Bottleneck adapters (peft/adapter.py) against the formula written out plainly."""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost.config import preset
from minipost.model import GPT
from minipost.peft import apply_adapters, trainable_parameters
from minipost.peft.adapter import AdapterLinear

VOCAB = 97


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=VOCAB)).eval()


def test_forward_equals_formula_float64():
    torch.manual_seed(0)
    base = nn.Linear(12, 16, bias=False)
    ad = AdapterLinear(base, bottleneck=4)
    with torch.no_grad():
        ad.up.weight.normal_()
        ad.up.bias.normal_()
    x = torch.randn(3, 12)
    o = x.double() @ base.weight.double().T
    z = o @ ad.down.weight.double().T + ad.down.bias.double()
    gelu = torch.tensor([[0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in row] for row in z.tolist()],
                        dtype=torch.float64)
    expected = o + gelu @ ad.up.weight.double().T + ad.up.bias.double()
    torch.testing.assert_close(ad(x).double(), expected, rtol=1e-5, atol=1e-6)


def test_placement_zero_init_identity_and_count():
    base = tiny()
    model = apply_adapters(copy.deepcopy(base), bottleneck=8)
    for layer in model.layers:
        assert isinstance(layer.attn.o_proj, AdapterLinear) and isinstance(layer.mlp.down_proj, AdapterLinear)
        assert isinstance(layer.attn.q_proj, nn.Linear) and isinstance(layer.mlp.up_proj, nn.Linear)
        assert torch.equal(layer.attn.o_proj.up.weight, torch.zeros(64, 8))
    ids = torch.randint(0, VOCAB, (2, 12))
    assert torch.equal(model(ids), base(ids))
    per_adapter = 64 * 8 + 8 + 8 * 64 + 64  # down (weight, bias) + up (weight, bias)
    n = model.cfg.n_layer * 2 * per_adapter
    assert trainable_parameters(model) == (n, base.num_parameters() + n)


def test_only_adapter_parameters_change_after_a_step():
    model = apply_adapters(tiny(), bottleneck=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the first step moves only `up` (down's gradient passes through up = 0)
        ids = torch.randint(0, VOCAB, (2, 10))
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        is_adapter = ".down." in n or ".up." in n  # not mlp.down_proj.base or mlp.up_proj
        if is_adapter:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]) and p.grad is None, n
