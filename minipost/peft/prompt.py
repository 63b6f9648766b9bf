"""Prompt tuning: learned input embeddings prepended to every sequence.

Lester, Al-Rfou & Constant (2021), "The Power of Scale for Parameter-Efficient Prompt
Tuning", §2. With X_e [T, d] the embedded input and P_e [P, d] the learned soft prompt,
the frozen model reads their concatenation and only P_e is trained:

    logits = LM([P_e ; X_e])[P:]          (the P virtual positions' outputs are dropped)

Positions: the soft prompt sits in front of the input like text, P positions before the
first real token. The virtual tokens take RoPE positions -P..-1 and the real positions stay
as the caller gave them. RoPE attention scores depend only on position differences
(q_i . k_j is a function of p_i - p_j), so this is the same model as virtual positions
0..P-1 with every real position shifted by P; but the caller's positions stay valid in
incremental decoding, where this hook is not called again (generate.py passes explicit
positions for each new token). In a packed row each document restarts at position 0 and
sees the virtual tokens as global keys (model.py), so packing stays equivalent to running
each document alone behind its own copy of the prompt.

Initialisation (§2.1; compared in §3.2): "random" draws N(0, std^2) with std the embedding
matrix's own standard deviation; "vocab" copies the embeddings of random vocabulary tokens;
any other string is text whose tokens' embeddings are copied (repeated or cropped to P),
e.g. a description of the task or its class labels (the paper's "class label" init).

Not the identity at the start, by construction: the real tokens now attend to P extra
positions and sit at shifted positions. Deviations: the paper's random init is uniform in
[-0.5, 0.5], sized for T5's embeddings; a normal at the embeddings' own scale fits any
model. "vocab" samples uniformly over the whole vocabulary, where the paper samples from
the 5,000 most common tokens (there is no frequency list here).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minipost.peft.settings import PromptSettings, record


class PromptEmbedding(nn.Module):
    """The soft prompt, weight [P, d_model], used as the GPT.prompt hook.

    forward(x [B, T, d], doc_ids [B, T] | None, position_ids [B, T])
        -> x' [B, P+T, d], doc_ids' [B, P+T] | None (virtual tokens: doc id -1),
           position_ids' [B, P+T] (virtual -P..-1, then the real positions unchanged).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    @property
    def n_virtual(self) -> int:
        return self.weight.shape[0]

    def forward(self, x, doc_ids, position_ids):
        B, P = x.shape[0], self.n_virtual
        x = torch.cat([self.weight.to(x.dtype).expand(B, -1, -1), x], dim=1)
        virtual_pos = torch.arange(-P, 0, device=x.device).expand(B, P)
        position_ids = torch.cat([virtual_pos, position_ids], dim=1)
        if doc_ids is not None:
            doc_ids = torch.cat([doc_ids.new_full((B, P), -1), doc_ids], dim=1)
        return x, doc_ids, position_ids


def initial_prompt(embedding: torch.Tensor, n_virtual: int, init: str = "random", tokenizer=None) -> torch.Tensor:
    """embedding [V, d] (the model's tok_emb.weight) -> initial soft prompt [n_virtual, d]."""
    embedding = embedding.detach()
    if init == "random":
        return torch.randn(n_virtual, embedding.shape[1], device=embedding.device, dtype=embedding.dtype) * embedding.std()
    if init == "vocab":
        ids = torch.randint(embedding.shape[0], (n_virtual,), device=embedding.device)
    else:
        if tokenizer is None:
            raise ValueError(f"prompt init from text {init!r} needs the tokenizer (tokenizer.encode(text) -> ids)")
        ids = list(tokenizer.encode(init))
        if not ids:
            raise ValueError(f"prompt init text {init!r} encodes to no tokens")
        ids = torch.tensor((ids * (n_virtual // len(ids) + 1))[:n_virtual], device=embedding.device)
    return embedding[ids].clone()


def apply_prompt(model: nn.Module, n_virtual: int = PromptSettings.n_virtual, init: str = PromptSettings.init,
                 tokenizer=None) -> nn.Module:
    """Freeze `model` (a GPT) and set GPT.prompt to a PromptEmbedding of n_virtual virtual
    tokens, initialised per `init` ("random", "vocab" or a text). Returns the model, in place."""
    if n_virtual < 1:
        raise ValueError(f"n_virtual must be >= 1, got {n_virtual}")
    model.requires_grad_(False)
    model.prompt = PromptEmbedding(initial_prompt(model.tok_emb.weight, n_virtual, init, tokenizer))
    record(model, "prompt", PromptSettings(n_virtual, init))
    return model.train(model.training)  # the new module follows the model's train/eval mode
