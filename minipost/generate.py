"""Batched sampling with a KV cache.

Prompts of different lengths share one batch by LEFT padding: every row's last prompt
token then sits in the same column, so each decoding step appends one column for all
rows. Pads are a document of their own (doc id 0, real tokens 1), so the attention mask
of attention.py keeps real tokens from seeing them; RoPE positions count real tokens
only, so a padded row computes exactly what it would alone.

With the cache, each step runs the model on one new token per row and attends to the
stored keys/values: O(T) work per token instead of re-running the whole prefix, O(T^2).
Only the last position of each step goes through lm_head (the prefill's other positions
predict tokens we already have), and the sampled token's log-prob is its logit minus the
logsumexp (no [B, V] log_softmax), skipped altogether with with_logps=False (evaluation).

Sampling: greedy (temperature 0), or softmax(logits / temperature) restricted to the
top_k most likely tokens and/or the smallest set whose probability reaches top_p
(nucleus sampling, Holtzman et al., 2019).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost import backend, guards
from minipost.model import KVCache


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, N] generated ids, pad_id after a row stopped
    lengths: torch.Tensor  # [B] generated tokens per row, the stop token included
    logps: torch.Tensor  # [B, N] log p(token) under the model (temperature 1), 0 after the end
    #                      (all 0 when generate ran with with_logps=False)


def left_pad(prompts: list[list[int]], pad_id: int, device=None):
    """-> input_ids [B, L] (left padded), doc_ids [B, L] (1 real, 0 pad), position_ids [B, L]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
    real = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        real[row, width - len(p):] = 1
    positions = (real.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), real.to(device), positions.to(device)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p; the top token always stays.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    guards.check_sampling_probs(probs)  # a diverged policy: one clear error, not torch's "contains nan"
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, stop_ids=(), pad_id: int = 0,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             with_logps: bool = True) -> Generation:
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens.

    A row stops after emitting any id in stop_ids. use_cache=False re-runs the full
    sequence each step (the slow reference the cache is tested against).
    """
    device = next(model.parameters()).device
    ids, doc_ids, positions = left_pad(prompts, pad_id, device)
    B = ids.shape[0]
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros(B, max_new_tokens, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    cache = KVCache(len(model.layers)) if use_cache else None
    step_ids, step_doc, step_pos = ids, doc_ids, positions
    # One autocast region for the whole loop (under --precision bf16): autocast keeps its
    # bf16 copies of the weights until the region ends, so they are cast once, not per token.
    with backend.autocast(device, model.base_params):
        for t in range(max_new_tokens):
            hidden = model.hidden_states(step_ids, doc_ids=step_doc, position_ids=step_pos, kv_cache=cache)
            logits = model.logits(hidden[:, -1])  # [B, V] float32
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            tokens[:, t] = nxt
            if with_logps:
                picked = logits.gather(-1, nxt[:, None]).squeeze(-1) - logits.logsumexp(-1)
                logps[:, t] = torch.where(done, 0.0, picked)
            lengths += (~done).long()
            done |= torch.isin(nxt, stop)
            if done.all():
                break
            new_pos = positions[:, -1:] + 1 if t == 0 else step_pos[:, -1:] + 1
            if use_cache:
                step_ids, step_doc, step_pos = nxt[:, None], torch.ones_like(nxt)[:, None], new_pos
            else:
                step_ids = torch.cat([step_ids, nxt[:, None]], 1)
                step_doc = torch.cat([step_doc, torch.ones_like(nxt)[:, None]], 1)
                step_pos = torch.cat([step_pos, new_pos], 1)
    n = int(lengths.max()) if B else 0
    return Generation(tokens[:, :n], lengths, logps[:, :n])
