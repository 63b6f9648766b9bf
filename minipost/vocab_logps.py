"""Log-probabilities of target tokens straight from the final hidden states, the vocabulary
projection (lm_head, W [V, d]) taken a block of vocabulary rows at a time.

For a hidden state h_i [d] and its target token y_i:

    logits_i = W h_i,      logp_i = logits_i[y_i] - logsumexp_v logits_i[v]

The logsumexp splits over vocabulary blocks k (exact, not an approximation):

    logsumexp_v logits_i[v] = logsumexp_k ( logsumexp_{v in block k} logits_i[v] )

and with g_i = d loss / d logp_i and p_i = softmax(logits_i) (= exp(logits_i - logsumexp)),

    d loss / d logits_i = g_i (onehot(y_i) - p_i)
    d loss / d h_i      = sum over blocks k of W_k^T (d loss / d logits_i)[block k]
    d loss / d W_k      = sum_i (d loss / d logits_i)[block k] h_i^T        (one write per block)

Why: on a real vocabulary the [N, V] logits are a step's largest tensors (SmolLM2: 1024 scored
rows x 49152 x 4 bytes = 200 MB), and autograd's logsumexp and gather make three more of that
size (the shifted logits, their exp, the gather's zero-filled gradient), each written to fresh
memory. Here a [N, V_k] block of about 2M logits (8 MB) is reduced while it is in the CPU's
cache, with its weight block [V_k, d]. The blocks are kept for the backward (as many bytes as
autograd keeps of the whole logits), which turns each into its gradient in place: no
temporary of size [N, V] is ever made. Measured on a float32 SmolLM2 LoRA-DPO step on one AVX2
core: docs/performance.md.

Same numbers as logprobs.token_logps(model.logits(h), y) (tested in float64), under the same
precision rule: the matmuls in the autocast dtype (bf16 under --precision bf16), every logit
upcast to float32 before the exp.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost import backend
from minipost.model import GPT

BLOCK_LOGITS = 1 << 21  # logits per block: 8 MB in float32, within a CPU's last-level cache


def _block_logits(hidden, weight, start, end):
    """logits[:, start:end] [N, end - start], upcast to float32 at least (float64 stays: tests)."""
    logits = F.linear(hidden, weight[start:end])
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class VocabLogps(torch.autograd.Function):
    """hidden [N, d], weight [V, d] (both in the matmul dtype), targets [N] valid ids, block: the
    vocabulary rows per block -> logp [N] float32 (float64 for float64 inputs).

    The blocks of logits are kept for the backward, which turns each into its gradient in
    place: so the backward can run once (retain_graph is refused)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, block):
        V = weight.shape[0]
        picked, block_lse, kept = None, [], []
        for start in range(0, V, block):
            end = min(start + block, V)
            logits = _block_logits(hidden, weight, start, end)
            block_lse.append(torch.logsumexp(logits, dim=-1))
            here = (targets >= start) & (targets < end)
            value = logits.gather(-1, (targets - start).clamp(0, end - start - 1)[:, None])[:, 0]
            picked = value if picked is None else torch.where(here, value, picked)
            kept.append(logits)
        lse = torch.logsumexp(torch.stack(block_lse, dim=-1), dim=-1)
        if any(ctx.needs_input_grad[:2]):  # nothing is kept for a no-grad pass (a reference model)
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.block, ctx.logits = block, kept
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        if ctx.logits is None:
            raise RuntimeError("VocabLogps: its backward reuses the logits in place and runs once (no retain_graph)")
        hidden, weight, targets, lse = ctx.saved_tensors
        blocks, ctx.logits = ctx.logits, None  # freed block by block below
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        d_hidden = torch.zeros(hidden.shape, dtype=grad.dtype, device=hidden.device) if need_hidden else None
        d_weight = torch.empty_like(weight) if need_weight else None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for k in range(len(blocks)):
            start = k * ctx.block
            end = start + blocks[k].shape[1]
            # -g_i p_i over this block, in place of its logits
            d_logits = blocks[k].sub_(lse[:, None]).exp_().mul_(-grad[:, None])
            blocks[k] = None
            here = (targets >= start) & (targets < end)
            d_logits[rows[here], targets[here] - start] += grad[here]  # + g_i at the target
            d_logits = d_logits.to(hidden.dtype)
            if need_hidden:  # summed in float32: a bf16 sum over the blocks would round each time
                d_hidden += d_logits @ weight[start:end]
            if need_weight:
                torch.mm(d_logits.T, hidden, out=d_weight[start:end])
        d_hidden = d_hidden.to(hidden.dtype) if need_hidden else None
        return d_hidden, d_weight, None, None


def vocab_logps(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) [N] through model's lm_head, as
    token_logps(model.logits(hidden)[None], targets[None])[0]: hidden [N, d_model] final
    normed states, targets [N] valid token ids (no -100). A model whose logits are not GPT's
    (a subclass's own, as a test's biased model) or whose head is not a plain bias-free
    nn.Linear takes that path instead."""
    head = model.lm_head
    if type(model).logits is not GPT.logits or type(head) is not nn.Linear or head.bias is not None:
        from minipost.logprobs import token_logps

        return token_logps(model.logits(hidden)[None], targets[None])[0]
    with backend.autocast(hidden.device, model.base_params):
        dtype = backend.matmul_dtype(hidden)
        weight = backend.frozen_weight(head.weight, hidden)  # the bf16 copy of a frozen head, cast once
    block = max(1, min(weight.shape[0], BLOCK_LOGITS // max(1, hidden.shape[0])))
    return VocabLogps.apply(hidden.to(dtype), weight.to(dtype), targets, block)
