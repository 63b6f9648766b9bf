"""kernels/doc_attention.py against a naive float64 softmax attention with a loop-built mask.

Without CUDA the kernels run under TRITON_INTERPRET=1 (NumPy on the CPU), set by tests/conftest.py
before triton first sees the kernel module; tiles there are 32 x 32, so T = 53 spans two
query tiles and two key tiles with document boundaries in the middle of tiles.
"""
import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernels.doc_attention import count_tiles, doc_attention, visited_tiles

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEV = "cpu" if INTERPRET else "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def rel_err(out, ref, floor=0.0):
    # ‖out - ref‖ / max(‖ref‖, floor): floor is the size of terms that cancel in ref (see check).
    return ((out.double() - ref).norm() / torch.clamp(ref.norm(), min=max(float(floor), 1e-300))).item()


def doc_ids_from_lengths(lengths, pad=0, pad_id=-1):
    ids = [d for d, n in enumerate(lengths) for _ in range(n)] + [pad_id] * pad
    return torch.tensor(ids)


def loop_mask(doc_ids):
    """mask[b, i, j] = (j <= i and doc_ids[b, i] == doc_ids[b, j]), element by element."""
    B, T = doc_ids.shape
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(i + 1):
                mask[b, i, j] = bool(doc_ids[b, i] == doc_ids[b, j])
    return mask


def reference(q, k, v, doc_ids, scale=None):
    """Naive attention in float64: softmax(scale q kᵀ masked to -inf) v, kv heads repeated."""
    q, k, v = (t.detach().double().cpu() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(~loop_mask(doc_ids.cpu())[:, None], float("-inf"))
    return torch.softmax(s, -1) @ v


def check(doc_ids, H, HK, D, dtype, scale=None, seed=0):
    B, T = doc_ids.shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(DEV, dtype).requires_grad_()
    k = torch.randn(B, HK, T, D, generator=g).to(DEV, dtype).requires_grad_()
    v = torch.randn(B, HK, T, D, generator=g).to(DEV, dtype).requires_grad_()
    do = torch.randn(B, H, T, D, generator=g).to(DEV, dtype)
    o = doc_attention(q, k, v, doc_ids.to(DEV), scale)
    o.backward(do)
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    o_ref = reference(q64, k64, v64, doc_ids, scale)
    # the reference's gradients: autograd through the float64 naive formula above
    q64.grad = k64.grad = v64.grad = None
    group = H // HK
    s = (1 / math.sqrt(D) if scale is None else scale) * q64 @ k64.repeat_interleave(group, 1).transpose(-1, -2)
    s = s.masked_fill(~loop_mask(doc_ids)[:, None], float("-inf"))
    (torch.softmax(s, -1) @ v64.repeat_interleave(group, 1)).backward(do.cpu().double())
    # dQ = scale * (P * (dP - delta)) K (and dK, through the same dS) is a difference of two terms that cancel exactly where
    # a query sees one key (a one-token document: dQ = 0, while fp32 leaves ~1e-7). Its error is
    # measured against the size of the first term, scale * (P * dP) K, when that is larger.
    with torch.no_grad():
        scale_ = 1 / math.sqrt(D) if scale is None else scale
        p64 = torch.softmax(s, -1)
        dp = do.cpu().double() @ v64.repeat_interleave(group, 1).transpose(-1, -2)
        dq_term = scale_ * (p64 * dp) @ k64.repeat_interleave(group, 1)
        dk_term = scale_ * (p64 * dp).transpose(-1, -2) @ q64  # dK cancels alike: scale * dSᵀ Q
    for t in (o, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    tol = TOL[dtype]
    assert o.shape == q.shape and o.dtype == dtype
    assert rel_err(o.cpu(), o_ref) < tol
    assert rel_err(q.grad.cpu(), q64.grad, floor=dq_term.norm()) < tol
    assert rel_err(k.grad.cpu(), k64.grad, floor=dk_term.norm()) < tol
    assert rel_err(v.grad.cpu(), v64.grad) < tol


# Row 0: documents of 10, 1, 20, 19 tokens (boundaries mid-tile, a length-1 document) and a
# padded tail of 3 tokens with id -1. Row 1: two documents and a pad tail whose id repeats
# the first document's (a non-contiguous id: the tail attends back to document 0).
PACKED = torch.stack([
    doc_ids_from_lengths([10, 1, 20, 19], pad=3),
    doc_ids_from_lengths([25, 20], pad=8, pad_id=0),
])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_gqa_matches_reference(dtype):
    check(PACKED, H=4, HK=2, D=24, dtype=dtype)


def test_single_document_is_plain_causal():
    T = 45
    doc_ids = torch.zeros(1, T, dtype=torch.long)
    check(doc_ids, H=2, HK=2, D=16, dtype=torch.float32, scale=0.3)
    # and it equals PyTorch's causal attention
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, T, 16, generator=g, dtype=torch.float64) for _ in range(3))
    o = doc_attention(q.to(DEV), k.to(DEV), v.to(DEV), doc_ids.to(DEV))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_err(o.cpu(), sdpa) < 1e-12


@settings(max_examples=4, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=5), pad=st.integers(0, 5),
       group=st.sampled_from([1, 2]), seed=st.integers(0, 99))
def test_random_documents_match_reference(lengths, pad, group, seed):
    check(doc_ids_from_lengths(lengths, pad=pad)[None], H=2, HK=2 // group, D=16,
          dtype=torch.float32, seed=seed)


def test_model_layout_strides():
    # The model makes q, k, v as [B, T, H, D] and transposes them: non-contiguous views.
    doc_ids = PACKED[:1, :40]
    g = torch.Generator().manual_seed(4)
    qs, ks, vs = (torch.randn(1, 40, h, 16, generator=g).to(DEV) for h in (4, 2, 2))
    views = [t.clone().requires_grad_() for t in (qs, ks, vs)]
    conts = [t.transpose(1, 2).contiguous().requires_grad_() for t in (qs, ks, vs)]
    do = torch.randn(1, 4, 40, 16, generator=g).to(DEV)
    o_view = doc_attention(*(t.transpose(1, 2) for t in views), doc_ids.to(DEV))
    o_cont = doc_attention(*conts, doc_ids.to(DEV))
    o_view.backward(do)
    o_cont.backward(do)
    assert torch.equal(o_view, o_cont)
    for a, b in zip(views, conts):
        assert torch.equal(a.grad.transpose(1, 2), b.grad)


def test_all_documents_of_length_one_attend_to_themselves():
    doc_ids = torch.arange(37)[None]
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 37, 16, generator=g).to(DEV) for _ in range(3))
    o = doc_attention(q, k, v, doc_ids.to(DEV))
    assert torch.allclose(o, v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("D", [64, 128])
def test_large_head_dims(D):
    doc_ids = doc_ids_from_lengths([7, 30, 3])[None]
    check(doc_ids, H=2, HK=1, D=D, dtype=torch.float32, seed=D)


def test_gradcheck_float64():
    # a length-1 document between two others, GQA (2 query heads share 1 kv head), D = 3
    doc_ids = torch.tensor([[0, 0, 1, 2, 2]])
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    k = torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    v = torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64).to(DEV).requires_grad_()
    fn = lambda q, k, v: doc_attention(q, k, v, doc_ids.to(DEV))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


def expected_tiles(lengths, block_m, block_n):
    """Tile pairs holding at least one visible (query, key) pair, from document lengths:
    document [s, e) makes query i see keys [s, i], so it touches key tiles s // bn ..
    i // bn from every query tile it covers."""
    pairs, s = set(), 0
    for n in lengths:
        e = s + n
        for qt in range(s // block_m, (e - 1) // block_m + 1):
            last_row = min(e, (qt + 1) * block_m) - 1
            pairs.update((qt, kt) for kt in range(s // block_n, last_row // block_n + 1))
        s = e
    return len(pairs)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(1, 70), min_size=1, max_size=8),
       block_m=st.sampled_from([16, 32, 64, 128]), block_n=st.sampled_from([16, 32, 64]))
def test_visited_tiles_matches_document_lengths(lengths, block_m, block_n):
    doc_ids = doc_ids_from_lengths(lengths)[None]
    assert visited_tiles(doc_ids, block_m, block_n) == expected_tiles(lengths, block_m, block_n)
    # two rows: counts add up
    both = torch.cat([doc_ids, doc_ids.flip(1)])
    assert visited_tiles(both, block_m, block_n) == (
        expected_tiles(lengths, block_m, block_n) + expected_tiles(lengths[::-1], block_m, block_n))


def test_visited_tiles_dense_and_diagonal():
    T, bm, bn = 1000, 128, 64
    dense = sum(math.ceil(min((qt + 1) * bm, T) / bn) for qt in range(math.ceil(T / bm)))
    assert visited_tiles(torch.zeros(1, T, dtype=torch.long), bm, bn) == dense
    # documents of one token: only the tiles on the diagonal
    diag = len({(i // bm, i // bn) for i in range(T)})
    assert visited_tiles(torch.arange(T)[None], bm, bn) == diag


def test_kernels_visit_exactly_the_scheduled_tiles():
    # 4 query tiles x 4 key tiles; documents of 8-40 tokens skip most of the dense 10 pairs.
    lengths = [8, 40, 12, 30, 9, 29]
    doc_ids = doc_ids_from_lengths(lengths)[None]
    H, HK, T = 2, 1, doc_ids.shape[1]
    q = torch.randn(1, H, T, 16, device=DEV, requires_grad=True)
    k = torch.randn(1, HK, T, 16, device=DEV, requires_grad=True)
    v = torch.randn(1, HK, T, 16, device=DEV, requires_grad=True)
    with count_tiles() as counts:
        doc_attention(q, k, v, doc_ids.to(DEV)).sum().backward()
    fwd_bm, fwd_bn = counts["fwd_blocks"]
    bwd_bm, bwd_bn = counts["bwd_blocks"]
    assert counts["fwd"] == H * expected_tiles(lengths, fwd_bm, fwd_bn)
    assert counts["dq"] == H * expected_tiles(lengths, bwd_bm, bwd_bn)
    assert counts["dkdv"] == H * expected_tiles(lengths, bwd_bm, bwd_bn)  # H_kv x group size
    dense = visited_tiles(torch.zeros_like(doc_ids), fwd_bm, fwd_bn)
    assert counts["fwd"] < H * dense


def test_bad_inputs_are_refused():
    q = torch.randn(1, 3, 8, 16, device=DEV)
    k = torch.randn(1, 2, 8, 16, device=DEV)
    with pytest.raises(ValueError, match="divide"):
        doc_attention(q, k, k, torch.zeros(1, 8, dtype=torch.long, device=DEV))
    with pytest.raises(ValueError, match="doc_ids"):
        doc_attention(q, q, q, torch.zeros(1, 8, device=DEV))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                    reason="bf16 needs a CUDA GPU (the interpreter's bf16 arithmetic is wrong)")
def test_bf16_on_gpu():
    lengths = [100, 1, 250, 37, 300]
    doc_ids = torch.stack([doc_ids_from_lengths(lengths, pad=12), doc_ids_from_lengths([700])])
    check(doc_ids, H=4, HK=2, D=128, dtype=torch.bfloat16)
