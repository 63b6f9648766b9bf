"""The fast paths compute the same numbers as the plain ones, and bf16 autocast stays close
to float32 (tolerances derived from bf16's precision, see test_bf16_step_matches_float32)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost import attention as attention_module
from minipost import backend
from minipost.attention import attention, attention_mask
from minipost.config import preset
from minipost.generate import generate
from minipost.logprobs import scored_logits, token_logps
from minipost.losses import sft_loss_sum
from minipost.model import GPT
from minipost.peft.nf4 import NF4Linear, dequantize_nf4

V = 97


@pytest.fixture(autouse=True)
def float32_after():
    yield
    backend.set_precision("fp32")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", V)).eval()


def masked_reference(q, k, v, doc):
    """Plain masked SDPA in float64 with K/V copied per query head (the old path)."""
    group = q.shape[1] // k.shape[1]
    mask = attention_mask(q.shape[2], k.shape[2], doc, doc)
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(group, 1),
                                          v.double().repeat_interleave(group, 1), attn_mask=mask)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=5), min_size=1, max_size=3),
       st.sampled_from([1, 2]), st.booleans())
def test_attention_per_document_equals_masked_attention(doc_lengths, group, shuffle):
    """Packed rows (non-decreasing doc ids) go per document; the result and the gradients
    equal the masked computation. Shuffled ids (not contiguous) take the mask path."""
    T = max(sum(row) for row in doc_lengths)
    doc = torch.zeros(len(doc_lengths), T, dtype=torch.long)
    for r, row in enumerate(doc_lengths):
        ids = torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row))
        doc[r, : len(ids)] = ids
        doc[r, len(ids):] = len(row)  # trailing padding: a document of its own
    if shuffle:
        doc = doc[:, torch.randperm(T)]
    g = torch.Generator().manual_seed(T)
    q = torch.randn(len(doc_lengths), 2 * group, T, 8, generator=g, requires_grad=True)
    k = torch.randn(len(doc_lengths), 2, T, 8, generator=g, requires_grad=True)
    v = torch.randn(len(doc_lengths), 2, T, 8, generator=g, requires_grad=True)
    got = attention(q, k, v, q_doc=doc, k_doc=doc)
    expected = masked_reference(q, k, v, doc)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((expected * weights.double()).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def test_padded_rows_need_no_mask_and_match_it(monkeypatch):
    """Right-padded SFT rows (real doc 0, pads doc 1) run without building a mask."""
    doc = torch.tensor([[0] * 10 + [1] * 6, [0] * 16])
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    calls = []
    monkeypatch.setattr(attention_module, "attention_mask", lambda *a, **kw: calls.append(a))
    got = attention(q, k, v, q_doc=doc, k_doc=doc)
    monkeypatch.undo()
    assert calls == []
    torch.testing.assert_close(got.double(), masked_reference(q, k, v, doc), rtol=1e-5, atol=1e-5)


def test_mask_is_built_once_per_forward(monkeypatch):
    """A decode step with left padding needs the mask: one build serves every layer."""
    model = GPT(preset("small", V)).eval()  # 4 layers
    built = []
    real_mask = attention_module.attention_mask
    monkeypatch.setattr(attention_module, "attention_mask", lambda *a, **kw: built.append(1) or real_mask(*a, **kw))
    generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], max_new_tokens=3)
    assert len(built) == 2  # decode steps 2 and 3; the prefill goes per document


def test_unpadded_decode_step_needs_no_mask_and_matches_it(monkeypatch):
    """One query against cached keys of its own document (a batch-1 decode step): no mask is
    built and the result equals the masked computation; one padded key brings the mask back."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 6, 1, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g)
    q_doc, k_doc = torch.ones(2, 1, dtype=torch.long), torch.ones(2, 9, dtype=torch.long)
    reference = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(3, 1),
                                               v.double().repeat_interleave(3, 1))  # the last query sees all keys
    calls = []
    real_mask = attention_module.attention_mask
    monkeypatch.setattr(attention_module, "attention_mask", lambda *a, **kw: calls.append(1) or real_mask(*a, **kw))
    torch.testing.assert_close(attention(q, k, v, q_doc=q_doc, k_doc=k_doc).double(), reference, rtol=1e-6, atol=1e-6)
    assert calls == []
    k_doc[1, 0] = 0  # row 1's first key is a left pad: hidden from its query
    got = attention(q, k, v, q_doc=q_doc, k_doc=k_doc)
    assert calls == [1]
    row1 = F.scaled_dot_product_attention(q[1:].double(), k[1:, :, 1:].double().repeat_interleave(3, 1),
                                          v[1:, :, 1:].double().repeat_interleave(3, 1))
    torch.testing.assert_close(got[1:].double(), row1, rtol=1e-6, atol=1e-6)


def reference_generate(model, prompt, n):
    """Greedy decoding of one unpadded prompt by full forward passes, log_softmax each step."""
    ids, logps = list(prompt), []
    for _ in range(n):
        step = model(torch.tensor([ids]))[0, -1].double().log_softmax(-1)
        nxt = int(step.argmax())
        ids.append(nxt)
        logps.append(float(step[nxt]))
    return ids[len(prompt):], logps


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_equals_full_forward_reference(use_cache):
    model = tiny_model()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    with torch.no_grad():
        gen = generate(model, prompts, 6, use_cache=use_cache)
        plain = generate(model, prompts, 6, use_cache=use_cache, with_logps=False)
        for row, p in enumerate(prompts):
            tokens, logps = reference_generate(model, p, 6)
            assert gen.tokens[row].tolist() == tokens
            torch.testing.assert_close(gen.logps[row].double(), torch.tensor(logps, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-5)
    assert torch.equal(plain.tokens, gen.tokens) and (plain.logps == 0).all()


def test_completion_logps_equal_full_logits_reference():
    """Scored rows only through lm_head: the same log-probs as token_logps over the full
    [N, C, V] logits of every row, masked."""
    from minipost.rollout import Rollout, completion_logps

    model = tiny_model(1)
    torch.manual_seed(3)
    N, P, C = 4, 5, 6
    prompt = torch.randint(1, V, (2, P)).repeat_interleave(2, 0)
    completions = torch.randint(1, V, (N, C))
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2, [True] + [False] * 5])
    sequences = torch.cat([prompt, completions], 1)
    doc = torch.ones_like(sequences)
    doc[0, 0] = doc[1, 0] = 0  # one left pad on the first prompt
    positions = (doc.cumsum(1) - 1).clamp(min=0)
    ro = Rollout(sequences, doc, positions, P, completions, mask, torch.zeros(N, C), torch.zeros(N),
                 torch.zeros(N), [""] * N, 2)
    full = model(sequences[:, :-1], doc_ids=doc[:, :-1], position_ids=positions[:, :-1])[:, P - 1:]
    targets = torch.where(mask, completions, torch.full_like(completions, -100))
    expected = token_logps(full.double(), targets)
    for share in (True, False):
        got = completion_logps(model, ro, share_prompt=share)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_bf16_step_matches_float32():
    """bf16 keeps 8 significant bits: each matmul input is rounded with relative error at
    most u = 2^-8 ~ 3.9e-3 (products accumulate in float32). A product of two rounded
    factors is off by <= 2u, and the loss (a float32 log-softmax of those products) by a
    few u; measured 6e-5 on this model, since errors of random sign cancel in the sums. A
    gradient passes through about twice as many bf16 matmuls (forward and backward), so each
    parameter's gradient is held to relative error (in norm) 4u ~ 1.6e-2 (measured <= 8e-3);
    the loss to 2u ~ 7.8e-3."""
    model = tiny_model(2).train()
    ids = torch.randint(0, V, (4, 48), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, V, (4, 48), generator=torch.Generator().manual_seed(1))
    targets[:, :8] = -100
    results = {}
    for precision in ("fp32", "bf16"):
        backend.set_precision(precision)
        model.zero_grad()
        logits, picked = scored_logits(model, ids, targets)
        loss_sum, n = sft_loss_sum(logits, picked)
        loss = loss_sum / n
        loss.backward()
        assert logits.dtype == torch.float32 and loss.dtype == torch.float32
        assert token_logps(logits, picked).dtype == torch.float32
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        results[precision] = loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}
    u = 2.0 ** -8
    (loss32, grads32), (loss16, grads16) = results["fp32"], results["bf16"]
    assert abs(loss16 - loss32) <= 2 * u * abs(loss32)
    for name, g in grads32.items():
        assert (grads16[name] - g).norm() <= 4 * u * g.norm(), name
    # The matmuls really ran in bf16 (not a silent float32 fallback): the results differ.
    assert loss16 != loss32


def test_autocast_forward_dtypes_and_nf4_dequantizes_into_bf16():
    model = tiny_model()
    backend.set_precision("bf16")
    logits, hidden = model(torch.tensor([[1, 2, 3]]), return_hidden=True)
    assert logits.dtype == torch.float32 and hidden.dtype == torch.float32
    lin = torch.nn.Linear(64, 32, bias=False)
    q = NF4Linear(lin)
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    assert y.dtype == torch.bfloat16
    expected = x.double() @ dequantize_nf4(q.quantized()).double().T
    # Weight and input each rounded once to bf16: relative error <= 2u per product, 2^-7.
    assert (y.double() - expected).norm() <= 2.0 ** -7 * expected.norm()
    assert dequantize_nf4(q.quantized(), torch.bfloat16).dtype == torch.bfloat16


def test_precision_choices(monkeypatch):
    assert backend.set_precision("fp32") == "fp32" and backend.autocast_dtype(10 ** 9) is None
    assert backend.set_precision("bf16") == "bf16" and backend.autocast_dtype(1) == torch.bfloat16
    monkeypatch.setattr(backend, "bf16_supported", lambda device="cpu": False)
    assert backend.set_precision("auto") == "fp32"  # a CPU without bf16 runs float32
    monkeypatch.setattr(backend, "bf16_supported", lambda device="cpu": True)
    assert backend.set_precision("auto") == "auto"
    assert backend.autocast_dtype(backend.AUTO_BF16_MIN_PARAMS - 1) is None
    assert backend.autocast_dtype(backend.AUTO_BF16_MIN_PARAMS) == torch.bfloat16
    with pytest.raises(ValueError, match="--precision"):
        backend.set_precision("fp16")


def test_frozen_weight_cast_once_and_refreshed_when_the_weight_changes():
    """LoRA's frozen base weight is cast to bf16 once under autocast; an in-place change
    (merge, load) moves its version and the next call casts again."""
    from minipost.peft.lora import LoRALinear

    layer = LoRALinear(torch.nn.Linear(16, 8, bias=False), r=2, alpha=4)
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = backend.frozen_weight(layer.base.weight, x)
        assert first.dtype == torch.bfloat16 and backend.frozen_weight(layer.base.weight, x) is first
        with torch.no_grad():
            layer.base.weight.mul_(2.0)
        y = layer(x)
    assert backend.frozen_weight(layer.base.weight, x) is layer.base.weight  # outside autocast: as is
    expected = x.double() @ layer.base.weight.double().T  # lora_B = 0: the base alone
    assert (y.double() - expected).norm() <= 2.0 ** -7 * expected.norm()


@pytest.mark.parametrize("explicit", [True, False])
def test_bf16_causal_attention_matches_float64_formula(monkeypatch, explicit):
    """Short bf16 rows on a CPU take the written-out formula (attention.causal_attention),
    long ones SDPA; both against softmax(q k^T * scale + causal mask) v in float64 on the
    same bf16 inputs. With u = 2^-8, each score is rounded to bf16 (relative error <= u),
    each probability and each output once more; the roundings are of random sign, so the
    sum over keys averages them: measured 0.6u of max |v| per output element and <= 1.1u
    (relative, in norm) for the gradients, both paths; held to 2u and 3u."""
    if not explicit:
        monkeypatch.setattr(attention_module, "EXPLICIT_MAX_KEYS", 0)
    g = torch.Generator().manual_seed(3)
    B, H, H_kv, T, D = 2, 6, 2, 40, 16
    q, k, v = (torch.randn(B, h, T, D, generator=g).bfloat16().requires_grad_() for h in (H, H_kv, H_kv))
    got = attention(q, k, v)
    assert got.dtype == torch.bfloat16
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    scores = q64 @ k64.repeat_interleave(H // H_kv, 1).transpose(-1, -2) / D ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.softmax(scores, -1) @ v64.repeat_interleave(H // H_kv, 1)
    u = 2.0 ** -8
    assert (got.double() - expected).abs().max() <= 2 * u * v64.abs().max()
    weights = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got.float() * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((expected * weights.double()).sum(), (q64, k64, v64))
    for a, b in zip(grads, grads_ref):
        assert (a.double() - b).norm() <= 3 * u * b.norm()


@pytest.mark.parametrize("explicit", [True, False])
def test_bf16_masked_attention_against_cached_keys_matches_float64_formula(monkeypatch, explicit):
    """Queries after cached keys with a document mask (the replies of a shared prompt: each
    row sees its own prompt keys, not the ones marked as another document) take the formula
    written out in bf16 on a CPU (explicit_attention with the mask as a bias), SDPA with the
    boolean mask otherwise; both against the float64 formula, with the bounds (and reasons)
    of the causal test above."""
    if not explicit:
        monkeypatch.setattr(attention_module, "EXPLICIT_MAX_KEYS", 0)
    g = torch.Generator().manual_seed(4)
    B, H, H_kv, Tq, Tk, D = 3, 6, 2, 9, 25, 16
    q = torch.randn(B, H, Tq, D, generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(B, H_kv, Tk, D, generator=g).bfloat16().requires_grad_() for _ in range(2))
    k_doc = torch.ones(B, Tk, dtype=torch.long)
    k_doc[0, 10:16] = 2  # row 0's cached keys 10..15 belong to another document
    k_doc[2, :3] = 0
    q_doc = torch.ones(B, Tq, dtype=torch.long)
    got = attention(q, k, v, q_doc=q_doc, k_doc=k_doc)
    assert got.dtype == torch.bfloat16
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    scores = q64 @ k64.repeat_interleave(H // H_kv, 1).transpose(-1, -2) / D ** 0.5
    visible = torch.zeros(B, 1, Tq, Tk, dtype=torch.bool)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                visible[b, 0, i, j] = j <= Tk - Tq + i and bool(k_doc[b, j] == q_doc[b, i])
    expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1) @ v64.repeat_interleave(H // H_kv, 1)
    u = 2.0 ** -8
    assert (got.double() - expected).abs().max() <= 2 * u * v64.abs().max()
    weights = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got.float() * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((expected * weights.double()).sum(), (q64, k64, v64))
    for a, b in zip(grads, grads_ref):
        assert (a.double() - b).norm() <= 3 * u * b.norm()


def test_freed_large_blocks_are_reused_not_faulted_in_again():
    """backend.reuse_freed_memory: a 64 MB malloc block, written and freed, is served again
    from the heap: the next four rounds fault no page in (glibc's default mmaps and unmaps
    each such block, so every round faults all 16k of its 4 KB pages in again)."""
    import ctypes
    import resource

    if not backend.reuse_freed_memory():
        pytest.skip("no glibc malloc here")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    size = 64 * 2 ** 20
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert faults[1:] == [0, 0, 0, 0]
