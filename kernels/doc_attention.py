"""Document-masked causal attention as a Triton flash-attention kernel, forward and backward.

Papers: Dao, Fu, Ermon, Rudra, Ré (2022), "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness"; Dao (2023), "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning" (one program per query tile in the forward, a separate
dK/dV pass and dQ pass in the backward, the log-sum-exp saved instead of the softmax).

Masking rule. Packed rows hold several documents; doc_ids [B, T] says which one each token
belongs to. Query i attends to key j iff

    j <= i  and  doc_ids[b, i] == doc_ids[b, j]        (causal within a document)

Every row sees at least itself, so no softmax row is empty (a pad token, whatever its doc
id, attends to itself or to other pad tokens with its id, and never yields NaN).

Forward, per query tile of BM rows, with the online-softmax recurrence over key tiles:

    m = -inf, l = 0, acc = 0                                 (per row)
    for each key tile K_j, V_j the schedule allows:
        s     = scale * Q K_jᵀ, set to -inf where the mask forbids
        m_new = max(m, rowmax(s))
        p     = exp(s - m_new)
        l     = l * exp(m - m_new) + rowsum(p)
        acc   = acc * exp(m - m_new) + p V_j
        m     = m_new
    O = acc / l ;  LSE = m + log(l)                          (LSE saved for the backward)

A row whose visible keys all lie in later tiles still has m = -inf after a tile; the kernel
then subtracts 0 instead of m_new so that exp(-inf - -inf) never produces NaN.

Backward: P = exp(scale * Q Kᵀ - LSE) (masked to 0), Delta = rowsum(O * dO) (a preprocess),
dV = Pᵀ dO, dP = dO Vᵀ, dS = P * (dP - Delta), dQ = scale * dS K, dK = scale * dSᵀ Q.
The dK/dV pass owns a key tile and loops over the query tiles (and, for grouped-query
attention, over the H / H_kv query heads sharing the kv head), so it needs no atomics; the
dQ pass owns a query tile and loops over key tiles.

Skipping rule (the schedule, computed on the host from doc_ids, shared by all passes).
first[i] = first position of doc_ids[b, i] in the row, last[j] = its last position. Query
row i can only see keys in [first[i], i], so query tile [m0, m1) visits the key tiles

    from  min(first[m0:m1]) // BN   to   ceil(min(m1, T) / BN)      (exclusive)

and key tile [n0, n1) is seen only by query rows in [n0, max(last[n0:n1])], so the dK/dV
pass visits the query tiles from n0 // BM to max(last[n0:n1]) // BM + 1. Every other tile
pair is fully masked, by causality or by document boundaries, and is never loaded. When
documents are contiguous runs (what packing produces) these are exactly the tile pairs that
contain at least one visible (query, key) pair; doc ids that recur later in a row are still
handled exactly (the mask is applied element-wise inside each tile), only skipped less.
visited_tiles() counts the forward schedule; count_tiles() reads back what the kernels did.

Deviations: the schedule needs one host pass over doc_ids per call (a torch.unique and
segment min/max). fp32 inputs use IEEE fp32 dots (not TF32) to match PyTorch's default.
fp64 is accepted (accumulating in fp64) so that torch.autograd.gradcheck can run.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from kernels.doc_schedule import doc_extents, tile_schedule, visited_tiles  # noqa: F401  (visited_tiles re-exported)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_COUNTS: dict | None = None


@contextlib.contextmanager
def count_tiles():
    """Debug: inside, the kernels record how many tile pairs they processed.

    Yields a dict that fills with "fwd", "dkdv", "dq" (tile pairs summed over programs,
    i.e. over batch rows and heads; dkdv counts each query head of a kv group) and the
    block sizes used, "fwd_blocks" and "bwd_blocks" as (block_m, block_n).
    """
    global _COUNTS
    prev, _COUNTS = _COUNTS, {}
    try:
        yield _COUNTS
    finally:
        _COUNTS = prev


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _visible(q_pos, k_pos, doc_q, doc_k, q_ok, k_ok):
    """The masking rule on index tensors broadcasting to a tile ([BM, 1] and [1, BN], or the
    transpose in the dK/dV pass); q_ok, k_ok drop rows past T."""
    return (k_pos <= q_pos) & (doc_q == doc_k) & q_ok & k_ok


@triton.jit
def _load_tile(ptr, rows, cols, sr, sc, row_ok, col_ok):
    """The [len(rows), len(cols)] tile at ptr + rows * sr + cols * sc, 0 where masked."""
    return tl.load(ptr + rows[:, None] * sr + cols[None, :] * sc, mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _own_tile(x_ptr, doc_ptr, range_ptr, T, NH, G, D, sxb, sxh, sxt, sxd, sdb, sdt, srb, srt,
              BLOCK: tl.constexpr, DP: tl.constexpr):
    """How every program starts: the tile t of BLOCK rows of head h, batch row b, it owns
    (bh = b * NH + h; hk = h // G, its kv head), rows r, columns rd and their masks, the tile
    x [BLOCK, DP] with its doc ids, and the tiles [lo, hi) of the other side the schedule visits.
    Forward and dQ: a query tile (x = q, NH = H); dK/dV: a key tile (x = k, NH = H_kv, G = 1)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    hk = h // G  # grouped-query attention: G query heads share one kv head
    r = t * BLOCK + tl.arange(0, BLOCK)
    rd = tl.arange(0, DP)
    r_ok = r < T
    d_ok = rd < D
    x = _load_tile(x_ptr + b * sxb + h * sxh, r, rd, sxt, sxd, r_ok, d_ok)
    doc = tl.load(doc_ptr + b * sdb + r * sdt, mask=r_ok, other=0)
    lo = tl.load(range_ptr + b * srb + t * srt)
    hi = tl.load(range_ptr + b * srb + t * srt + 1)
    return t, bh, b, h, hk, r, rd, r_ok, d_ok, x, doc, lo, hi


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, doc_ptr, o_ptr, lse_ptr, kv_range_ptr, count_ptr,
    T, H, G, D, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdb, sdt, sob, soh, sot, sod, srb, srt,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, ACC: tl.constexpr,
    COUNT: tl.constexpr,
):
    qt, bh, b, h, hk, rm, rd, m_ok, d_ok, q, doc_q, lo, hi = _own_tile(
        q_ptr, doc_ptr, kv_range_ptr, T, H, G, D, sqb, sqh, sqt, sqd, sdb, sdt, srb, srt, BM, DP)
    m_i = tl.full((BM,), float("-inf"), dtype=ACC)
    l_i = tl.zeros((BM,), dtype=ACC)
    acc = tl.zeros((BM, DP), dtype=ACC)
    n_iter = 0
    for kt in range(lo, hi):
        rn = kt * BN + tl.arange(0, BN)
        n_ok = rn < T
        kT = _load_tile(k_ptr + b * skb + hk * skh, rd, rn, skd, skt, d_ok, n_ok)
        v = _load_tile(v_ptr + b * svb + hk * svh, rn, rd, svt, svd, n_ok, d_ok)
        doc_k = tl.load(doc_ptr + b * sdb + rn * sdt, mask=n_ok, other=0)
        s = tl.dot(q, kT, input_precision="ieee", out_dtype=ACC) * scale
        visible = _visible(rm[:, None], rn[None, :], doc_q[:, None], doc_k[None, :], m_ok[:, None], n_ok[None, :])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: no NaN
        alpha = tl.exp(m_i - m_sub)
        p = tl.exp(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee", out_dtype=ACC)
        m_i = m_new
        n_iter += 1
    l_div = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past T (never stored) have l = 0
    o = acc / l_div[:, None]
    tl.store(o_ptr + b * sob + h * soh + rm[:, None] * sot + rd[None, :] * sod,
             o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + bh * T + rm, m_i + tl.log(l_div), mask=m_ok)
    if COUNT:
        tl.store(count_ptr + bh * tl.num_programs(0) + qt, n_iter)


@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, T, H, D,
                  sob, soh, sot, sod, sgb, sgh, sgt, sgd,
                  BM: tl.constexpr, DP: tl.constexpr, ACC: tl.constexpr):
    """delta[b, h, i] = sum_d o[b, h, i, d] * do[b, h, i, d]."""
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rm = qt * BM + tl.arange(0, BM)
    rd = tl.arange(0, DP)
    o = _load_tile(o_ptr + b * sob + h * soh, rm, rd, sot, sod, rm < T, rd < D)
    do = _load_tile(do_ptr + b * sgb + h * sgh, rm, rd, sgt, sgd, rm < T, rd < D)
    tl.store(delta_ptr + bh * T + rm, tl.sum(o.to(ACC) * do.to(ACC), 1), mask=rm < T)


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr, doc_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, q_range_ptr, count_ptr,
    T, H, HK, G, D, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdb, sdt, sgb, sgh, sgt, sgd, srb, srt,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, ACC: tl.constexpr,
    COUNT: tl.constexpr,
):
    kt, bhk, b, hk, _, rn, rd, n_ok, d_ok, k, doc_k, lo, hi = _own_tile(
        k_ptr, doc_ptr, q_range_ptr, T, HK, 1, D, skb, skh, skt, skd, sdb, sdt, srb, srt, BN, DP)
    v = _load_tile(v_ptr + b * svb + hk * svh, rn, rd, svt, svd, n_ok, d_ok)
    dk = tl.zeros((BN, DP), dtype=ACC)
    dv = tl.zeros((BN, DP), dtype=ACC)
    n_iter = 0
    for g in range(0, G):
        h = hk * G + g
        for qt in range(lo, hi):
            rm = qt * BM + tl.arange(0, BM)
            m_ok = rm < T
            qT = _load_tile(q_ptr + b * sqb + h * sqh, rd, rm, sqd, sqt, d_ok, m_ok)
            do = _load_tile(do_ptr + b * sgb + h * sgh, rm, rd, sgt, sgd, m_ok, d_ok)
            doc_q = tl.load(doc_ptr + b * sdb + rm * sdt, mask=m_ok, other=0)
            lse = tl.load(lse_ptr + (b * H + h) * T + rm, mask=m_ok, other=0.0)
            delta = tl.load(delta_ptr + (b * H + h) * T + rm, mask=m_ok, other=0.0)
            sT = tl.dot(k, qT, input_precision="ieee", out_dtype=ACC) * scale  # [BN, BM]
            visT = _visible(rm[None, :], rn[:, None], doc_q[None, :], doc_k[:, None], m_ok[None, :], n_ok[:, None])
            pT = tl.exp(tl.where(visT, sT, float("-inf")) - lse[None, :])
            dv += tl.dot(pT.to(do.dtype), do, input_precision="ieee", out_dtype=ACC)
            dpT = tl.dot(v, tl.trans(do), input_precision="ieee", out_dtype=ACC)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision="ieee", out_dtype=ACC)
            n_iter += 1
    out = b * HK * T * D + hk * T * D + rn[:, None] * D + rd[None, :]  # dk, dv contiguous
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    if COUNT:
        tl.store(count_ptr + bhk * tl.num_programs(0) + kt, n_iter)


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, doc_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, kv_range_ptr, count_ptr,
    T, H, G, D, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    sdb, sdt, sgb, sgh, sgt, sgd, srb, srt,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, ACC: tl.constexpr,
    COUNT: tl.constexpr,
):
    qt, bh, b, h, hk, rm, rd, m_ok, d_ok, q, doc_q, lo, hi = _own_tile(
        q_ptr, doc_ptr, kv_range_ptr, T, H, G, D, sqb, sqh, sqt, sqd, sdb, sdt, srb, srt, BM, DP)
    do = _load_tile(do_ptr + b * sgb + h * sgh, rm, rd, sgt, sgd, m_ok, d_ok)
    lse = tl.load(lse_ptr + bh * T + rm, mask=m_ok, other=0.0)
    delta = tl.load(delta_ptr + bh * T + rm, mask=m_ok, other=0.0)
    dq = tl.zeros((BM, DP), dtype=ACC)
    n_iter = 0
    for kt in range(lo, hi):
        rn = kt * BN + tl.arange(0, BN)
        n_ok = rn < T
        kT = _load_tile(k_ptr + b * skb + hk * skh, rd, rn, skd, skt, d_ok, n_ok)
        vT = _load_tile(v_ptr + b * svb + hk * svh, rd, rn, svd, svt, d_ok, n_ok)
        doc_k = tl.load(doc_ptr + b * sdb + rn * sdt, mask=n_ok, other=0)
        s = tl.dot(q, kT, input_precision="ieee", out_dtype=ACC) * scale
        visible = _visible(rm[:, None], rn[None, :], doc_q[:, None], doc_k[None, :], m_ok[:, None], n_ok[None, :])
        p = tl.exp(tl.where(visible, s, float("-inf")) - lse[:, None])
        dp = tl.dot(do, vT, input_precision="ieee", out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision="ieee", out_dtype=ACC)
        n_iter += 1
    tl.store(dq_ptr + b * H * T * D + h * T * D + rm[:, None] * D + rd[None, :],  # dq contiguous
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    if COUNT:
        tl.store(count_ptr + bh * tl.num_programs(0) + qt, n_iter)


# ----------------------------------------------------------------------------- launch

def tile_config(D: int, interpret: bool | None = None) -> dict:
    """Tiles used for head dim D: fwd / bwd (block_m, block_n), warps, pipeline stages.

    One configuration (multi-config autotune fails in the interpreter); interpret=None
    follows TRITON_INTERPRET.
    """
    if _interpreting() if interpret is None else interpret:
        # the interpreter's cost grows with programs x iterations: few, large tiles
        return dict(fwd=(32, 32), bwd=(32, 32), warps=4, stages=1)
    big = D > 64
    return dict(fwd=(128, 64), bwd=(64, 64), warps=8 if big else 4, stages=2 if big else 3)


def _acc(dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _counter(n, device, enabled):
    return torch.zeros(max(n, 1) if enabled else 1, device=device, dtype=torch.int32)


class DocAttention(torch.autograd.Function):
    """autograd.Function for doc_attention; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, doc_ids, scale):
        B, H, T, D = q.shape
        HK = k.shape[1]
        cfg = tile_config(D)
        BM, BN = cfg["fwd"]
        DP = max(16, triton.next_power_of_2(D))
        ACC, acc_t = _acc(q.dtype)
        first, last = doc_extents(doc_ids)
        kv_range, _ = tile_schedule(first, last, BM, BN)
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty((B, H, T), device=q.device, dtype=acc_t)
        count = _COUNTS is not None
        nq = triton.cdiv(T, BM)
        cnt = _counter(B * H * nq, q.device, count)
        _fwd_kernel[(nq, B * H)](
            q, k, v, doc_ids, o, lse, kv_range, cnt, T, H, H // HK, D, scale,
            *q.stride(), *k.stride(), *v.stride(), *doc_ids.stride(), *o.stride(),
            kv_range.stride(0), kv_range.stride(1),
            BM=BM, BN=BN, DP=DP, ACC=ACC, COUNT=count, num_warps=cfg["warps"], num_stages=cfg["stages"],
        )
        if count:
            _COUNTS["fwd"] = _COUNTS.get("fwd", 0) + int(cnt.sum())
            _COUNTS["fwd_blocks"] = (BM, BN)
        ctx.save_for_backward(q, k, v, doc_ids, o, lse, first, last)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, doc_ids, o, lse, first, last = ctx.saved_tensors
        scale = ctx.scale
        B, H, T, D = q.shape
        HK = k.shape[1]
        G = H // HK
        cfg = tile_config(D)
        BM, BN = cfg["bwd"]
        DP = max(16, triton.next_power_of_2(D))
        ACC, acc_t = _acc(q.dtype)
        do = do.to(q.dtype)
        kv_range, q_range = tile_schedule(first, last, BM, BN)
        nq, nk = triton.cdiv(T, BM), triton.cdiv(T, BN)
        count = _COUNTS is not None
        opts = dict(num_warps=cfg["warps"], num_stages=cfg["stages"])

        delta = torch.empty((B, H, T), device=q.device, dtype=acc_t)
        _delta_kernel[(nq, B * H)](o, do, delta, T, H, D, *o.stride(), *do.stride(),
                                   BM=BM, DP=DP, ACC=ACC, num_warps=4)

        dk = torch.empty((B, HK, T, D), device=q.device, dtype=q.dtype)
        dv = torch.empty((B, HK, T, D), device=q.device, dtype=q.dtype)
        cnt_kv = _counter(B * HK * nk, q.device, count)
        _dkdv_kernel[(nk, B * HK)](
            q, k, v, doc_ids, do, lse, delta, dk, dv, q_range, cnt_kv, T, H, HK, G, D, scale,
            *q.stride(), *k.stride(), *v.stride(), *doc_ids.stride(), *do.stride(),
            q_range.stride(0), q_range.stride(1),
            BM=BM, BN=BN, DP=DP, ACC=ACC, COUNT=count, **opts,
        )
        dq = torch.empty((B, H, T, D), device=q.device, dtype=q.dtype)
        cnt_q = _counter(B * H * nq, q.device, count)
        _dq_kernel[(nq, B * H)](
            q, k, v, doc_ids, do, lse, delta, dq, kv_range, cnt_q, T, H, G, D, scale,
            *q.stride(), *k.stride(), *v.stride(), *doc_ids.stride(), *do.stride(),
            kv_range.stride(0), kv_range.stride(1),
            BM=BM, BN=BN, DP=DP, ACC=ACC, COUNT=count, **opts,
        )
        if count:
            _COUNTS["dkdv"] = _COUNTS.get("dkdv", 0) + int(cnt_kv.sum())
            _COUNTS["dq"] = _COUNTS.get("dq", 0) + int(cnt_q.sum())
            _COUNTS["bwd_blocks"] = (BM, BN)
        return dq, dk, dv, None, None


def doc_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor,
                  scale: float | None = None) -> torch.Tensor:
    """Causal attention within documents, as a Triton flash-attention kernel.

    q:       [B, H, T, D]     queries (fp16, bf16 on GPU, fp32, fp64)
    k, v:    [B, H_kv, T, D]  keys and values; H_kv divides H (grouped-query attention:
                              query head h uses kv head h // (H // H_kv))
    doc_ids: [B, T] integer   document of each token; i attends to j iff j <= i and
                              doc_ids[b, i] == doc_ids[b, j]
    scale:   float            softmax scale, default 1 / sqrt(D)
    returns  o [B, H, T, D] in q's dtype; gradients flow to q, k, v.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("doc_attention: q, k, v must be [B, H, T, D].")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (T, D):
        raise ValueError(f"doc_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must be "
                         f"[B={B}, H_kv, T={T}, D={D}].")
    if H % k.shape[1] != 0:
        raise ValueError(f"doc_attention: H_kv={k.shape[1]} must divide H={H}.")
    if tuple(doc_ids.shape) != (B, T) or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool:
        raise ValueError(f"doc_attention: doc_ids must be an integer [B={B}, T={T}] tensor, got "
                         f"{doc_ids.dtype} {tuple(doc_ids.shape)}.")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (
            torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"doc_attention: q, k, v must share a float dtype, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}.")
    if D > 256:
        raise ValueError(f"doc_attention: head dim {D} > 256 is not supported.")
    if not (q.is_cuda or _interpreting()):
        raise RuntimeError("doc_attention runs on CUDA tensors, or on the CPU only under "
                           "TRITON_INTERPRET=1 (for testing).")
    if B * H * T == 0:
        return q.clone()  # nothing to attend over; an empty output
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    return DocAttention.apply(q, k, v, doc_ids, float(scale))
