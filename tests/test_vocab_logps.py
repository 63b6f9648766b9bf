"""vocab_logps (the lm_head and log-softmax a vocabulary block at a time) against the plain
formula: logits = W h, logp = logits[y] - logsumexp(logits), autograd's gradient, float64."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost import backend
from minipost.config import GPTConfig
from minipost.model import GPT
from minipost.vocab_logps import VocabLogps, vocab_logps


def formula(hidden, weight, targets):
    logits = hidden @ weight.T
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(0, 12), V=st.integers(1, 40), d=st.integers(1, 8), block=st.integers(1, 45),
       seed=st.integers(0, 10_000))
def test_values_and_gradients_equal_the_formula(N, V, d, block, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    grad = torch.randn(N, generator=g, dtype=torch.float64)
    ours = VocabLogps.apply(hidden, weight, targets, block)
    want = formula(hidden, weight, targets)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-12)
    if N == 0:
        return
    got = torch.autograd.grad(ours, (hidden, weight), grad)
    expected = torch.autograd.grad(want, (hidden, weight), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradient_against_central_differences():
    # (torch's gradcheck runs one graph's backward many times, which this Function refuses)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets, grad = torch.tensor([0, 6, 3, 3, 2]), torch.randn(5, generator=g, dtype=torch.float64)
    loss = lambda h, w: (grad * VocabLogps.apply(h, w, targets, 3)).sum()  # noqa: E731
    got = torch.autograd.grad(loss(hidden, weight), (hidden, weight))
    eps = 1e-6
    for x, dx in zip((hidden, weight), got):
        for i in range(x.numel()):
            bump = torch.zeros_like(x).view(-1)
            bump[i] = eps
            args = [hidden.detach(), weight.detach()]
            k = 0 if x is hidden else 1
            up = loss(*[a + bump.view_as(a) if j == k else a for j, a in enumerate(args)])
            down = loss(*[a - bump.view_as(a) if j == k else a for j, a in enumerate(args)])
            assert abs(float((up - down) / (2 * eps)) - float(dx.view(-1)[i])) < 1e-7


def test_backward_runs_once():
    hidden = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    out = VocabLogps.apply(hidden, torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 4]), 2).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        out.backward()


def tiny_model(tie: bool):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=37, n_layer=1, n_head=2, n_kv_head=1, d_model=8, d_ff=16, max_seq_len=16,
                    tie_embeddings=tie)
    return GPT(cfg).double()


@pytest.mark.parametrize("tie", [True, False])
def test_model_head_equals_token_logps_of_the_logits(tie, monkeypatch):
    from minipost import vocab_logps as module
    from minipost.logprobs import token_logps

    monkeypatch.setattr(module, "BLOCK_LOGITS", 50)  # 10 rows -> blocks of 5 of the 37 tokens
    model = tiny_model(tie)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (10,))
    ours = vocab_logps(model, hidden, targets)
    want = token_logps(model.logits(hidden)[None], targets[None])[0]
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-12)
    params = [hidden, model.lm_head.weight]
    for a, b in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bf16_matmul_float32_logps_match_the_logits_path():
    from minipost.logprobs import token_logps

    model = tiny_model(True).float()
    hidden = torch.randn(6, 8)
    targets = torch.randint(0, 37, (6,))
    backend.set_precision("bf16")
    try:
        ours = vocab_logps(model, hidden, targets)
        want = token_logps(model.logits(hidden)[None], targets[None])[0]
    finally:
        backend.set_precision("fp32")
    assert ours.dtype == torch.float32
    # the same bf16 logits, reduced in float32 in another order (blocks): float32 rounding only
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)
