"""The model's pieces against formulas written out plainly, in float64 where it helps."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minipost.attention import attention
from minipost.config import GPTConfig, preset
from minipost.model import GPT, KVCache, RMSNorm, apply_rope, rope_cos_sin


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=97, **kw)).eval()


def test_state_dict_names_follow_the_llama_layout():
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_head=4, d_model=32, n_kv_head=2, tie_embeddings=False)
    names = set(GPT(cfg).state_dict())
    expected = {"tok_emb.weight", "norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attn_norm.weight", f"layers.{i}.mlp_norm.weight"}
        expected |= {f"layers.{i}.attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        expected |= {f"layers.{i}.mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
    assert names == expected
    m = GPT(cfg)
    assert m.layers[0].attn.k_proj.weight.shape == (2 * 8, 32)  # n_kv_head * head_dim


def test_tied_embeddings_share_storage():
    m = tiny_model()
    assert m.lm_head.weight is m.tok_emb.weight


def test_rmsnorm_matches_formula_float64():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16)
    x64, w64 = x.double(), norm.weight.double()
    expected = torch.empty_like(x64)
    for i in range(3):
        for j in range(5):
            v = x64[i, j]
            expected[i, j] = v / math.sqrt(float((v * v).mean()) + 1e-5) * w64
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), dim=st.integers(1, 40), eps=st.sampled_from([1e-6, 1e-5, 1e-2]),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_rmsnorm_written_out_backward_equals_autograd_float64(rows, dim, eps, scale, seed):
    """RMSNormFunction's forward and hand-written gradients (x and weight) against autograd
    of x / sqrt(mean(x^2) + eps) * w, all in float64, over row sizes and input scales."""
    from minipost.model import RMSNormFunction

    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(2, rows, dim, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(dim, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, rows, dim, generator=g, dtype=torch.float64)
    got = RMSNormFunction.apply(x, w, eps, torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    (dx, dw), (dx_ref, dw_ref) = torch.autograd.grad(got, (x, w), dy), torch.autograd.grad(expected, (x, w), dy)
    # dx is a difference of two terms of size r |dy w| that cancel (completely when dim = 1):
    # the rounding is relative to them, not to dx
    r = torch.rsqrt(x.detach().pow(2).mean(-1) + eps).max()
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12 * float(r * (dy * w.detach()).abs().max()))
    torch.testing.assert_close(dw, dw_ref, rtol=1e-10, atol=1e-12 * float(dy.abs().sum()))


def test_rmsnorm_gradcheck_and_the_module_matches_its_reference():
    from minipost.model import RMSNormFunction

    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-5, torch.float64), (x, w))
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=g))
    x32 = torch.randn(4, 6, generator=g, requires_grad=True)
    got, expected = norm(x32), norm.reference(x32)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    pairs = zip(torch.autograd.grad(got.sum(), (x32, norm.weight)), torch.autograd.grad(expected.sum(), (x32, norm.weight)))
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rope_matches_explicit_rotation_float64():
    torch.manual_seed(0)
    B, H, T, D, theta = 2, 3, 7, 8, 10000.0
    x = torch.randn(B, H, T, D)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 0, 1, 9, 2, 2, 40]])
    cos, sin = rope_cos_sin(pos, D, theta)
    got = apply_rope(x, cos, sin).double()
    expected = torch.empty(B, H, T, D, dtype=torch.float64)
    half = D // 2
    for b in range(B):
        for t in range(T):
            p = int(pos[b, t])
            for i in range(half):
                a = p * theta ** (-2 * i / D)
                x1, x2 = x[b, :, t, i].double(), x[b, :, t, i + half].double()
                expected[b, :, t, i] = x1 * math.cos(a) - x2 * math.sin(a)
                expected[b, :, t, i + half] = x2 * math.cos(a) + x1 * math.sin(a)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def naive_attention(q, k, v, q_doc, k_doc, n_global=0):
    """Softmax over visible keys, one query at a time, in float64."""
    B, H, Tq, D = q.shape
    Tk, group = k.shape[2], q.shape[1] // k.shape[1]
    out = torch.zeros(B, H, Tq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                p = Tk - Tq + i
                scores, values = [], []
                for j in range(Tk):
                    visible = j <= p and (j < n_global or q_doc is None or int(q_doc[b, i]) == int(k_doc[b, j]))
                    if visible:
                        scores.append(float(q[b, h, i].double() @ k[b, h // group, j].double()) / math.sqrt(D))
                        values.append(v[b, h // group, j].double())
                m = max(scores)
                w = [math.exp(s - m) for s in scores]
                z = sum(w)
                out[b, h, i] = sum(wi / z * vi for wi, vi in zip(w, values))
    return out


@pytest.mark.parametrize("n_global", [0, 2])
def test_attention_matches_naive_loop_with_documents(n_global):
    torch.manual_seed(1)
    B, H, Hkv, T, D = 2, 4, 2, 9, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 5, 5, 7]])
    got = attention(q, k, v, q_doc=doc, k_doc=doc, n_global=n_global)
    torch.testing.assert_close(got.double(), naive_attention(q, k, v, doc, doc, n_global), rtol=1e-5, atol=1e-5)


def test_attention_causal_and_with_cached_keys():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    qd, kd = torch.tensor([[1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(attention(q, k, v, q_doc=qd, k_doc=kd).double(),
                               naive_attention(q, k, v, qd, kd), rtol=1e-5, atol=1e-5)
    q, k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    torch.testing.assert_close(attention(q, k, v).double(), naive_attention(q, k, v, None, None), rtol=1e-5, atol=1e-5)


def test_packed_row_equals_documents_alone():
    m = tiny_model()
    torch.manual_seed(3)
    docs = [torch.randint(0, 97, (n,)) for n in (5, 1, 8)]
    row = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed = m(row, doc_ids=doc_ids, position_ids=pos)[0]
    alone = torch.cat([m(d[None])[0] for d in docs])
    assert (packed - alone).abs().max().item() <= 1e-5


@given(split=st.integers(1, 11), seed=st.integers(0, 5))
@settings(max_examples=15, deadline=None)
def test_kv_cache_equals_full_forward(split, seed):
    m = tiny_model(seed)
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(seed))
    full = m(x)
    cache = KVCache(len(m.layers))
    parts = [m(x[:, :split], kv_cache=cache)]
    for t in range(split, 12):
        parts.append(m(x[:, t:t + 1], kv_cache=cache))
    assert (torch.cat(parts, 1) - full).abs().max().item() <= 1e-5


def test_return_hidden_and_inputs_embeds():
    m = tiny_model()
    x = torch.randint(0, 97, (2, 6))
    logits, hidden = m(x, return_hidden=True)
    assert hidden.shape == (2, 6, 64)
    torch.testing.assert_close(m.lm_head(hidden), logits)
    assert torch.equal(m(inputs_embeds=m.tok_emb(x)), logits)
    with pytest.raises(ValueError):
        m(x, inputs_embeds=m.tok_emb(x))


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(vocab_size=10, n_layer=1, n_head=4, d_model=32, n_kv_head=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge", 10)
