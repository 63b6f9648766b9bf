"""A small Llama-style decoder (Touvron et al., 2023), written out in full.

    h = x + Attention(RMSNorm(x))            per layer, pre-norm residual blocks
    y = h + SwiGLU(RMSNorm(h))
    logits = lm_head(RMSNorm(y_last_layer))

RMSNorm (Zhang & Sennrich, 2019):  x / sqrt(mean(x^2) + eps) * weight, computed in float32.
RoPE (Su et al., 2021), "rotate half" layout: for angle a_p,i = p * theta^(-2i/head_dim),
    rope(x)_p = x * cos(a_p) + rotate_half(x) * sin(a_p),  rotate_half([x1, x2]) = [-x2, x1]
where x1, x2 are the first and second halves of the head dimension.
SwiGLU (Shazeer, 2020):  down(silu(gate(x)) * up(x)).

Parameter names follow the Llama layout one to one (docs/DESIGN.md §3), so a state dict reads like
one. Three hooks serve parameter-efficient fine-tuning without changing this file:
`Attention.prefix` (prefix-tuning K/V), `GPT.prompt` (prompt-tuning virtual tokens) and
wrapping any nn.Linear (LoRA, bottleneck adapters).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost import backend
from minipost.attention import Documents, attention
from minipost.config import GPTConfig


def rms_norm(x, weight, eps, out_dtype):
    """-> (y = x * r * w in out_dtype, r [..., 1]), the forward of RMSNormFunction below."""
    r = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps))
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    torch.mul(x * r, weight, out=y)
    return y, r


class RMSNormFunction(torch.autograd.Function):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row, and its gradient written out
    (xhat = x * r, g = dy * w, d = the row's size):

        dx = r * (g - xhat * mean(g * xhat)),      dw = sum over rows of dy * xhat

    Autograd of the expression in RMSNorm.forward takes ~10 passes over the [tokens, d]
    activations backward and 5 forward; this takes 6 and 3 (measured at SmolLM2's width,
    4 x 256 tokens, forward + backward: 3.1 -> 2.0 ms). All math in x's dtype (float32);
    y comes out in out_dtype (the autocast dtype: the matmuls after the norm cast to it anyway).
    """

    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype):
        y, r = rms_norm(x, weight, eps, out_dtype)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, r = ctx.saved_tensors
        dy = dy.to(x.dtype)
        xhat = x * r
        dw = (dy * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        g = dy * weight
        mean_g_xhat = (g * xhat).mean(-1, keepdim=True)
        dx = g.addcmul_(xhat, mean_g_xhat, value=-1).mul_(r) if ctx.needs_input_grad[0] else None
        return dx, dw, None, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the output feeds only matmuls, which would each cast it to bf16 again
        # (q, k, v and their LoRA branches: six casts of one tensor); cast it once here instead.
        # The bf16 values are the same, so are the results.
        dtype = backend.matmul_dtype(x)
        math_dtype = torch.promote_types(x.dtype, torch.float32)  # float32 at least (float64 stays, for tests)
        x, weight = x.to(math_dtype), self.weight.to(math_dtype)
        if not torch.is_grad_enabled():  # generation: no autograd.Function bookkeeping per call
            return rms_norm(x, weight, self.eps, dtype)[0]
        return RMSNormFunction.apply(x, weight, self.eps, dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The formula as plain tensor ops (autograd's gradient): what RMSNormFunction is tested against."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B, T] -> cos, sin [B, 1, T, head_dim] (float32), rotate-half layout."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # same angle for x1[i] and x2[i]
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated by position (float32 math, result in x's dtype)."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64 (tests)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, for incremental decoding.

    Besides K/V it remembers each cached token's document id (left padding is a document
    of its own), the next RoPE position of each row, and how many leading keys are global
    (prompt-tuning virtual tokens).
    """

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.doc_ids: torch.Tensor | None = None  # [B, T_cached]
        self.next_pos: torch.Tensor | None = None  # [B]
        self.n_global = 0

    @property
    def length(self) -> int:
        return 0 if self.doc_ids is None else self.doc_ids.shape[1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        # Prefix tuning sets this to a module returning (k, v), each [B, n_kv_head, P, head_dim].
        self.prefix: nn.Module | None = None

    def forward(self, x, cos, sin, documents: Documents, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_index, k, v)
        n_prefix = 0
        if self.prefix is not None:
            # Learned keys/values are not tokens: no position, no rotation, visible to all.
            pk, pv = self.prefix(B)
            k, v = torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)
            n_prefix = pk.shape[2]
        o = attention(q, k, v, documents=documents, n_prefix=n_prefix)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_index: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_index)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, documents, kv_cache):
        x = x + self.attn(self.attn_norm(x), cos, sin, documents, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Prompt tuning sets this to a module that prepends virtual tokens (see peft/prompt.py).
        self.prompt: nn.Module | None = None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                # GPT-2's scaled init: each residual branch adds variance, so shrink the
                # projections that write into the residual stream by 1/sqrt(2 * n_layer).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # Token embeddings start with unit-norm rows (std 1/sqrt(d_model)), not GPT-2's 0.02.
        # Training adds a direction shared by all tokens of a kind (every month name, say); when
        # it dwarfs the small random start, those tokens become near copies of each other and
        # the model cannot copy one of them from its context (measured: DESIGN-NOTES.md).
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.d_model ** -0.5)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # The base model's size decides `--precision auto` (backend.autocast_dtype).
        self.base_params = self.num_parameters()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
    ):
        """input_ids [B, T] (or inputs_embeds [B, T, d_model]) -> logits [B, T, vocab] in float32.

        doc_ids [B, T]: document of each token; attention stays within a document.
        position_ids [B, T]: RoPE positions (packing restarts them per document); default
        0..T-1, or continuing from the cache. kv_cache: a KVCache, appended in place.
        return_hidden: also return the final normed hidden states [B, T, d_model].
        """
        hidden = self.hidden_states(input_ids, inputs_embeds=inputs_embeds, doc_ids=doc_ids,
                                    position_ids=position_ids, kv_cache=kv_cache)
        logits = self.logits(hidden)
        return (logits, hidden) if return_hidden else logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d_model] -> logits [..., vocab] float32 (lm_head, in the autocast
        precision: under bf16 the largest matmul of a real model)."""
        with backend.autocast(hidden.device, self.base_params):
            weight = backend.frozen_weight(self.lm_head.weight, hidden)  # cast once when frozen
            logits = F.linear(hidden, weight, self.lm_head.bias)
            return logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays (tests)

    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states [B, T, d_model], without the vocabulary projection
        (same arguments as forward). Callers that need logits at a few positions only (SFT
        trains ~17% of its tokens) or none at all (a reward model) project just those rows
        with GPT.logits: the [B, T, vocab] logits are the costliest tensor of a small model.

        Under `--precision bf16` the layers run inside torch.autocast (backend.autocast):
        matmuls in bf16, the residual stream, norms and returned states in float32 (a block's
        norm hands its output to the matmuls already cast to bf16, see RMSNorm).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            if past:
                position_ids = kv_cache.next_pos[:, None] + torch.arange(T, device=x.device)
            else:
                position_ids = torch.arange(T, device=x.device).expand(B, T)
        if kv_cache is not None and doc_ids is None:
            doc_ids = torch.zeros(B, T, dtype=torch.long, device=x.device)

        n_virtual = 0
        if self.prompt is not None and past == 0:
            x, doc_ids, position_ids = self.prompt(x, doc_ids, position_ids)
            n_virtual = x.shape[1] - T
        n_global = kv_cache.n_global if past else n_virtual

        k_doc = doc_ids
        if kv_cache is not None:
            if past:
                k_doc = torch.cat([kv_cache.doc_ids, doc_ids], dim=1)
            kv_cache.doc_ids, kv_cache.n_global = k_doc, n_global
            kv_cache.next_pos = position_ids[:, -1] + 1

        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        documents = Documents(doc_ids, k_doc, n_global)  # the mask is built once, not per layer
        with backend.autocast(x.device, self.base_params):
            for layer in self.layers:
                x = layer(x, cos, sin, documents, kv_cache)
        return self.norm(x)[:, n_virtual:].to(x.dtype)  # the residual's dtype also under a caller's autocast

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
