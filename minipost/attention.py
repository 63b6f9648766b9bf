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


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_doc: torch.Tensor | None = None,
    k_doc: torch.Tensor | None = None,
    n_global: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, H_kv, Tk, D] with H_kv dividing H (grouped-query
    attention: query head h reads kv head h // (H // H_kv)). Returns o [B, H, Tq, D].
    """
    tq, tk = q.shape[2], k.shape[2]
    if backend.triton_enabled() and tq == tk and n_global == 0:
        from kernels.doc_attention import doc_attention

        doc_ids = q_doc if q_doc is not None else torch.zeros(q.shape[0], tq, dtype=torch.long, device=q.device)
        return doc_attention(q, k, v, doc_ids, scale=scale)

    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if q_doc is None and n_global == 0 and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = attention_mask(tq, tk, q_doc, k_doc, n_global, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

