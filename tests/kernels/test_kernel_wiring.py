"""--kernels triton routes LoRA and document-masked attention through the Triton kernels:
one training step gives the same loss and gradients as the PyTorch reference."""
import pytest
import torch
import torch.nn.functional as F

from minipost import backend
from minipost.config import preset
from minipost.model import GPT
from minipost.peft import apply_lora, apply_prefix


def packed_batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [[7, 1, 12, 4], [15, 9]]  # row 1 has a padded tail (doc id 9)
    ids, docs, pos = [], [], []
    for row in lengths:
        n_pad = 24 - sum(row)
        ids.append(torch.randint(4, vocab, (24,), generator=g))
        docs.append(torch.cat([torch.full((n,), d) for d, n in enumerate(row)] + [torch.full((n_pad,), 9)]))
        pos.append(torch.cat([torch.arange(n) for n in row] + [torch.arange(n_pad)]))
    targets = torch.stack(ids).roll(-1, 1)
    for b, row in enumerate(lengths):
        targets[b, sum(row):] = -100
    return torch.stack(ids), torch.stack(docs), torch.stack(pos), targets


def step(model, batch, kernels):
    backend.set_kernels(kernels)
    try:
        model.zero_grad(set_to_none=True)
        ids, docs, pos, targets = batch
        logits = model(ids, doc_ids=docs, position_ids=pos)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads
    finally:
        backend.set_kernels("torch")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def spy(monkeypatch, module_name, fn_name):
    """Count the calls of a kernel entry point (the code imports it at call time)."""
    import sys

    import kernels  # noqa: F401

    module = sys.modules[module_name]
    calls, original = [], getattr(module, fn_name)
    monkeypatch.setattr(module, fn_name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_lora_training_step_matches_reference_with_triton_kernels(monkeypatch):
    attn_calls = spy(monkeypatch, "kernels.doc_attention", "doc_attention")
    lora_calls = spy(monkeypatch, "kernels.lora_matmul", "lora_matmul")
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=97))
    apply_lora(model, r=8, alpha=16)
    with torch.no_grad():  # a trained-looking adapter, so dA and dB both matter
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.02)
    batch = packed_batch(97)
    loss_ref, grads_ref = step(model, batch, "torch")
    assert attn_calls == [] and lora_calls == []
    loss_tri, grads_tri = step(model, batch, "triton")
    assert len(attn_calls) == 2 and len(lora_calls) == 2 * 7  # every layer went through the kernels
    assert abs(loss_tri.item() - loss_ref.item()) <= 1e-4 * abs(loss_ref.item())
    assert grads_ref.keys() == grads_tri.keys() and len(grads_ref) == 2 * 7 * 2
    for name in grads_ref:
        assert rel(grads_tri[name], grads_ref[name]) <= 1e-4, name


def test_calls_the_kernels_cannot_serve_fall_back_to_the_reference(monkeypatch):
    """Prefix K/V (global keys) must not reach doc_attention; the result equals the reference."""
    calls = spy(monkeypatch, "kernels.doc_attention", "doc_attention")
    torch.manual_seed(1)
    model = GPT(preset("tiny", vocab_size=97))
    apply_prefix(model, n_virtual=3)
    batch = packed_batch(97, seed=1)
    loss_ref, _ = step(model, batch, "torch")
    loss_tri, _ = step(model, batch, "triton")
    assert calls == [] and torch.equal(loss_ref, loss_tri)


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.set_kernels("triton", "cpu")
    assert backend.set_kernels("auto", "cpu") == "torch"
