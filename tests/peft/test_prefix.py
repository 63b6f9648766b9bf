"""Prefix tuning (peft/prefix.py): attention over [prefix; keys] written out as a loop."""
import copy
import math

import torch
import torch.nn.functional as F

from minipost.attention import Documents
from minipost.config import preset
from minipost.model import GPT, KVCache, rope_cos_sin
from minipost.peft import apply_prefix, trainable_parameters
from minipost.peft.prefix import EncodedPrefix, PrefixKV

VOCAB = 97


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=VOCAB)).eval()


def rope64(x, positions, theta):
    """x [T, D] float64 rotated by the rotate-half rule: pairs (i, i + D/2) turn by p * theta^(-2i/D)."""
    T, D = x.shape
    out = x.clone()
    for t in range(T):
        for i in range(D // 2):
            a = positions[t] * theta ** (-2 * i / D)
            x1, x2 = x[t, i].item(), x[t, i + D // 2].item()
            out[t, i] = x1 * math.cos(a) - x2 * math.sin(a)
            out[t, i + D // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def reference_attention_layer(attn, x, doc_ids, positions, pk, pv, theta):
    """One layer's attention with prefix K/V [H_kv, P, D], as loops in float64:
    o_i = sum_j softmax_j(q_i . k_j / sqrt(D)) v_j over j in prefix (always visible) and
    the real keys j <= i of the same document."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    Wq, Wk, Wv, Wo = (getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    out = torch.zeros(B, T, H * D, dtype=torch.float64)
    for b in range(B):
        xb = x[b].double()
        q_all, k_all, v_all = xb @ Wq.T, xb @ Wk.T, xb @ Wv.T
        for h in range(H):
            g = h // (H // Hkv)  # the kv head this query head reads
            q = rope64(q_all[:, h * D:(h + 1) * D], positions[b].tolist(), theta)
            k = rope64(k_all[:, g * D:(g + 1) * D], positions[b].tolist(), theta)
            v = v_all[:, g * D:(g + 1) * D]
            for i in range(T):
                keys = [pk[g, p].double() for p in range(pk.shape[1])]
                vals = [pv[g, p].double() for p in range(pv.shape[1])]
                for j in range(i + 1):
                    if doc_ids[b, j] == doc_ids[b, i]:
                        keys.append(k[j])
                        vals.append(v[j])
                scores = [float(q[i] @ kk) / math.sqrt(D) for kk in keys]
                m = max(scores)
                weights = [math.exp(s - m) for s in scores]
                z = sum(weights)
                out[b, i, h * D:(h + 1) * D] = sum(w / z * vv for w, vv in zip(weights, vals))
    return out @ Wo.T


def test_layer_attention_equals_reference_with_packed_documents():
    model = apply_prefix(tiny(), n_virtual=3)
    torch.manual_seed(1)
    attn = model.layers[0].attn
    with torch.no_grad():
        attn.prefix.key.normal_(std=0.5)
        attn.prefix.value.normal_()
    x = torch.randn(2, 7, 64)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [4, 4, 4, 4, 4, 4, 4]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])
    cos, sin = rope_cos_sin(positions, attn.head_dim, model.cfg.rope_theta)
    got = attn(x, cos, sin, Documents(doc_ids, doc_ids, 0), None)
    expected = reference_attention_layer(attn, x, doc_ids, positions, attn.prefix.key.detach(),
                                         attn.prefix.value.detach(), model.cfg.rope_theta)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_packed_row_equals_each_document_alone():
    model = apply_prefix(tiny(), n_virtual=4)
    torch.manual_seed(2)
    docs = [torch.randint(0, VOCAB, (n,)) for n in (5, 1, 6)]
    ids = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed = model(ids, doc_ids=doc_ids, position_ids=positions)[0]
    alone = torch.cat([model(d[None])[0] for d in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_projection_is_the_mlp_formula_and_equals_plain_prefix():
    model = apply_prefix(tiny(), n_virtual=5, projection=True, hidden=24)
    enc = model.prefix_encoder
    cfg = model.cfg
    E = enc.embedding.double()
    l1, l2 = enc.mlp[0], enc.mlp[2]
    out = torch.tanh(E @ l1.weight.double().T + l1.bias.double()) @ l2.weight.double().T + l2.bias.double()
    out = out.view(5, cfg.n_layer, 2, cfg.n_kv_head, cfg.head_dim)  # per position: every layer's K and V
    for layer_index, layer in enumerate(model.layers):
        assert isinstance(layer.attn.prefix, EncodedPrefix)
        k, v = layer.attn.prefix(3)
        assert k.shape == (3, cfg.n_kv_head, 5, cfg.head_dim)
        torch.testing.assert_close(k[1].double(), out[:, layer_index, 0].transpose(0, 1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[2].double(), out[:, layer_index, 1].transpose(0, 1), rtol=1e-5, atol=1e-6)
    # The same keys/values given as plain prefixes give the same logits.
    plain = apply_prefix(tiny(), n_virtual=5)
    with torch.no_grad():
        for a, b in zip(plain.layers, model.layers):
            k, v = b.attn.prefix(1)
            a.attn.prefix.key.copy_(k[0])
            a.attn.prefix.value.copy_(v[0])
    ids = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(plain(ids), model(ids), rtol=0, atol=1e-6)
    # The encoder's weights are registered once (not once per layer).
    assert [n for n in model.state_dict() if "prefix" in n] == [
        "prefix_encoder.embedding", "prefix_encoder.mlp.0.weight", "prefix_encoder.mlp.0.bias",
        "prefix_encoder.mlp.2.weight", "prefix_encoder.mlp.2.bias"]


def test_only_prefix_parameters_train_and_count():
    model = apply_prefix(tiny(), n_virtual=6)
    ids = torch.randint(0, VOCAB, (2, 10))
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".prefix." in name), name
    cfg = model.cfg
    n = cfg.n_layer * 2 * cfg.n_kv_head * 6 * cfg.head_dim
    assert trainable_parameters(model) == (n, tiny().num_parameters() + n)


def test_not_the_identity_at_the_start():
    base = tiny()
    ids = torch.randint(0, VOCAB, (1, 8))
    model = apply_prefix(copy.deepcopy(base), n_virtual=4)
    assert not torch.allclose(model(ids), base(ids), atol=1e-4)


def test_kv_cache_decoding_equals_full_forward():
    model = apply_prefix(tiny(), n_virtual=3, projection=True)
    ids = torch.randint(0, VOCAB, (2, 9))
    full = model(ids)
    cache = KVCache(model.cfg.n_layer)
    steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert isinstance(apply_prefix(tiny(), 2).layers[0].attn.prefix, PrefixKV)
