"""Reference attention: causal, document-masked, with always-visible ("global") keys.

Scaled dot-product attention (Vaswani et al., 2017):

    o_i = sum_j softmax_j(q_i . k_j * scale + mask_ij) v_j,     scale = 1 / sqrt(head_dim)

The mask. Keys are laid out as [global keys | cached keys | new keys], and the Tq queries
are the last Tq of them, so query i sits at key index p(i) = Tk - Tq + i. Key j is
visible to query i when

    j <= p(i)                                   (causal), and
    j < n_global  or  doc_q[i] == doc_k[j]      (same document, unless the key is global)

Global keys are prefix-tuning K/V and prompt-tuning virtual tokens: every document may see
them. Document ids serve three purposes with one rule: packed documents (docs/DESIGN.md §3), left
padding in batched generation (pads get their own id, so real tokens never see them and a
pad row still sees itself, which keeps the softmax finite), and plain causal attention
(doc ids None = one document per row).

With `--kernels triton` the calls the fused kernel can serve (no cache, no global keys)
go to `kernels.doc_attention`; everything else stays here, explicitly.

Not computing what the mask removes. A `Documents` object describes one forward pass and is
shared by every layer: the boolean mask is built once (not once per layer and decode step),
and rows whose document ids never decrease (packed rows, right-padded batches) are split
into their documents: each document is a contiguous run, and attention within it is plain
causal attention. Documents are gathered into batches of equal padded width (a multiple of
SEGMENT_WIDTH; the padding sits after each document, where the causal rule hides it from
the real queries) and each batch runs causal attention, so the scores between documents, which
the mask would throw away, are never computed. The result equals the masked path (tested).
Short rows in bf16 on a CPU skip SDPA for the written-out formula (explicit_attention: the
fused CPU kernel measured 2-4x slower there), masked or not.
A decode step of a row without padding (one query, every key in its document) needs no
mask at all and calls SDPA without one.
Grouped-query attention passes the kv heads to SDPA as they are (enable_gqa) instead of
copying them once per query head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minipost import backend


def attention_mask(
    tq: int,
    tk: int,
    q_doc: torch.Tensor | None = None,
    k_doc: torch.Tensor | None = None,
    n_global: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean visibility mask [B or 1, 1, Tq, Tk] (True = may attend), per the rule above.

    q_doc: [B, Tq] document id of each query; k_doc: [B, Tk] of each key (ignored for the
    first n_global keys). Both None means one document per row.
    """
    q_index = torch.arange(tq, device=device)[:, None] + (tk - tq)
    k_index = torch.arange(tk, device=device)[None, :]
    visible = (k_index <= q_index)[None, None]  # [1, 1, Tq, Tk]
    if q_doc is not None:
        same_doc = q_doc[:, None, :, None] == k_doc[:, None, None, :]  # [B, 1, Tq, Tk]
        is_global = (k_index < n_global)[None, None]
        visible = visible & (same_doc | is_global)
    return visible


SEGMENT_WIDTH = 32  # documents are padded to a multiple of this to share one SDPA call
# The CPU's fused SDPA kernel is slow in bf16 on short rows. Measured forward + backward with
# SmolLM2's heads (9 query, 3 kv, head_dim 64) on one AMX core: 2-4x slower than two matmuls
# and a softmax for 64-256 keys (4 x 256: 20 ms against 11 ms a layer); in float32, and in
# bf16 from ~512 keys, it is as fast or faster and keeps no [T, T] probabilities for backward.
EXPLICIT_MAX_KEYS = 256


class Documents:
    """The document structure of one forward pass, computed once and shared by all layers.

    q_doc: [B, Tq] doc id of each query; k_doc: [B, Tk] of each key (cached keys first);
    n_global: leading always-visible keys (prompt tuning). A layer's prefix-tuning keys come
    on top (n_prefix): they are global too and sit before all others.
    """

    def __init__(self, q_doc: torch.Tensor | None, k_doc: torch.Tensor | None, n_global: int = 0):
        self.q_doc, self.k_doc, self.n_global = q_doc, k_doc, n_global
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self._segments = None
        self._one_document = None

    def mask(self, tq: int, tk: int, n_prefix: int = 0) -> torch.Tensor:
        """[B or 1, 1, Tq, Tk] visibility, Tk counting the n_prefix prefix keys."""
        key = (tq, tk, n_prefix)
        if key not in self._masks:
            device = None if self.q_doc is None else self.q_doc.device
            base = attention_mask(tq, tk - n_prefix, self.q_doc, self.k_doc, self.n_global, device=device)
            if n_prefix:  # prefix keys are visible to every query
                base = torch.cat([base.new_ones(*base.shape[:-1], n_prefix), base], dim=-1)
            self._masks[key] = base
        return self._masks[key]

    def bias(self, q: torch.Tensor, tk: int, n_prefix: int, h_kv: int) -> torch.Tensor:
        """explicit_attention's bias for this mask, laid out for queries q [B, H, Tq, D] and
        h_kv kv heads ([B * h_kv, group * Tq, Tk]); built once, not in every layer."""
        key = (q.shape[2], tk, n_prefix, q.dtype, q.shape[1], h_kv)
        if key not in self._masks:
            self._masks[key] = head_layout(as_bias(self.mask(q.shape[2], tk, n_prefix)[:, 0], q.dtype), q, h_kv)
        return self._masks[key]

    def one_document(self) -> bool:
        """True when every key is in its row's queries' document (an unpadded prompt and its
        decoded tokens): a single query then sees every key, so a decode step needs no mask."""
        if self._one_document is None:
            self._one_document = self.q_doc is None or bool((self.k_doc == self.q_doc[:, :1]).all()
                                                            and (self.q_doc == self.q_doc[:, :1]).all())
        return self._one_document

    def segments(self):
        """For rows whose doc ids never decrease: [(index [n, W], real [n, W])] per padded
        width W, index into the flattened [B * T] positions (B * T = a zero pad slot) of the
        n documents of that width; "causal" when every row is one document; None when some
        row's doc ids decrease."""
        if self._segments is None:
            self._segments = _segments(self.q_doc) if bool((self.q_doc[:, 1:] >= self.q_doc[:, :-1]).all()) else ()
        return self._segments or None


def _segments(doc: torch.Tensor):
    B, T = doc.shape
    starts_doc = torch.ones_like(doc, dtype=torch.bool)
    starts_doc[:, 1:] = doc[:, 1:] != doc[:, :-1]
    starts = starts_doc.flatten().nonzero().squeeze(1)  # flat index where each document begins
    if len(starts) == B:
        return "causal"
    lengths = torch.diff(starts, append=starts.new_tensor([B * T]))
    widths = (lengths + SEGMENT_WIDTH - 1) // SEGMENT_WIDTH * SEGMENT_WIDTH
    groups = []
    for width in widths.unique().tolist():
        pick = widths == width
        offsets = torch.arange(width, device=doc.device)
        real = offsets < lengths[pick][:, None]
        index = torch.where(real, starts[pick][:, None] + offsets, B * T)
        groups.append((index, real))
    return groups


def explicit_is_faster(q, tk: int) -> bool:
    """Whether attention with tk keys should take the formula written out (explicit_attention)
    instead of SDPA: bf16 on a CPU with at most EXPLICIT_MAX_KEYS keys."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and tk <= EXPLICIT_MAX_KEYS


def explicit_attention(q, k, v, scale, bias):
    """softmax(q k^T * scale + bias) v written out, as eager attention under autocast computes
    it: bf16 scores and probabilities, the softmax accumulated in float32. q [B, H, Tq, D];
    k, v [B, H_kv, Tk, D]; bias: 0 where visible, -inf where not, [Tq, Tk] (the same for every
    row), [B, Tq, Tk], or already in head_layout. The scale and the bias go into the scores'
    matmul (baddbmm: bias + scale * q k^T in one pass), not two more passes over the scores
    forward and two backward: causal, 12 -> 7 ms a layer at SmolLM2's heads, 4 x 256."""
    B, H, Tq, D = q.shape
    h_kv, Tk = k.shape[1], k.shape[2]
    if not (bias.dim() == 3 and bias.shape[:2] == (B * h_kv, (H // h_kv) * Tq)):
        bias = head_layout(bias, q, h_kv)
    # A group's queries in one matmul: rows g*Tq ... g*Tq + Tq - 1 are query head g of the group.
    scores = torch.baddbmm(bias, q.reshape(B * h_kv, (H // h_kv) * Tq, D), k.reshape(B * h_kv, Tk, D).transpose(1, 2),
                           alpha=scale)
    probs = torch.softmax(scores, dim=-1)  # float32 inside the kernel, bf16 out
    return (probs @ v.reshape(B * h_kv, Tk, D)).view(B, H, Tq, D)


def head_layout(bias: torch.Tensor, q: torch.Tensor, h_kv: int) -> torch.Tensor:
    """bias [Tq, Tk] or [B, Tq, Tk] -> the layout of explicit_attention's scores: [group * Tq, Tk]
    (broadcast over rows and kv heads), or [B * h_kv, group * Tq, Tk]; query head g of a kv
    head's group owns rows g * Tq ... g * Tq + Tq - 1 (group = H // h_kv)."""
    B, H, Tq, _ = q.shape
    group = H // h_kv  # query heads group*j ... group*j + group - 1 read kv head j
    if bias.dim() == 2:
        return bias.repeat(group, 1)
    return bias[:, None, None].expand(B, h_kv, group, Tq, bias.shape[-1]).reshape(B * h_kv, group * Tq, -1)


def as_bias(visible: torch.Tensor, dtype) -> torch.Tensor:
    """Boolean visibility -> an additive bias: 0 where visible, -inf where not."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def causal_attention(q, k, v, scale):
    """Causal attention of q [B, H, T, D] on k, v [B, H_kv, T, D]: explicit_attention where
    that is faster (explicit_is_faster), SDPA elsewhere."""
    T = q.shape[2]
    if not explicit_is_faster(q, T):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return explicit_attention(q, k, v, scale, as_bias(causal, q.dtype))


def _attention_by_document(q, k, v, groups, scale):
    """Causal attention within each document of (q, k, v) [B, H(_kv), T, D], see the docstring."""
    B, H, T, D = q.shape

    def flat_padded(x):  # [B, h, T, D] -> [B * T + 1, h, D], the last row a zero pad slot
        x = x.transpose(1, 2).reshape(B * T, x.shape[1], D)
        return torch.cat([x, x.new_zeros(1, *x.shape[1:])])

    qf, kf, vf = flat_padded(q), flat_padded(k), flat_padded(v)
    outs, where = [], []
    for index, real in groups:
        o = causal_attention(qf[index].transpose(1, 2), kf[index].transpose(1, 2),
                             vf[index].transpose(1, 2), scale)  # [n, H, W, D]
        outs.append(o.transpose(1, 2)[real])  # [n_real, H, D]
        where.append(index[real])
    order = torch.cat(where).argsort()  # the documents partition the positions
    return torch.cat(outs)[order].view(B, T, H, D).transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_doc: torch.Tensor | None = None,
    k_doc: torch.Tensor | None = None,
    n_global: int = 0,
    scale: float | None = None,
    documents: Documents | None = None,
    n_prefix: int = 0,
) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, H_kv, Tk, D] with H_kv dividing H (grouped-query
    attention: query head h reads kv head h // (H // H_kv)). Returns o [B, H, Tq, D].

    The document structure comes as q_doc/k_doc/n_global or, from the model, as a shared
    `documents`; n_prefix: how many of the first keys are this layer's prefix-tuning keys.
    """
    if documents is None:
        documents = Documents(q_doc, k_doc, n_global)
    tq, tk = q.shape[2], k.shape[2]
    n_global = documents.n_global + n_prefix
    if backend.triton_enabled() and tq == tk and n_global == 0:
        from kernels.doc_attention import doc_attention

        doc_ids = documents.q_doc
        if doc_ids is None:
            doc_ids = torch.zeros(q.shape[0], tq, dtype=torch.long, device=q.device)
        return doc_attention(q, k, v, doc_ids, scale=scale)

    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if n_global == 0 and tq == tk:
        groups = None if documents.q_doc is None else documents.segments()
        if documents.q_doc is None or groups == "causal":  # one document per row (an unpadded rollout row)
            return causal_attention(q, k, v, scale)
        if groups is not None:
            return _attention_by_document(q, k, v, groups, scale)
    if tq == 1 and n_global == 0 and documents.one_document():  # a decode step of an unpadded row
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    if explicit_is_faster(q, tk):  # e.g. the replies of a shared prompt, against its cached keys
        return explicit_attention(q, k, v, scale, documents.bias(q, tk, n_prefix, k.shape[1]))
    mask = documents.mask(tq, tk, n_prefix)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)

