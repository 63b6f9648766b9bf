"""The training steps the throughput and peer benchmarks time, on random tokens.

The second half of every row is scored (a prompt, then a completion of T/2 tokens):
  sft:  one forward + backward over B x T tokens, cross-entropy on the scored half.
  dpo:  policy forward + backward over 2B rows (chosen, rejected), a no-grad reference
        forward over the same rows (adapters off for LoRA, a frozen copy when full), DPO loss;
        a pair's shared prompt runs once (logprobs.pair_sequence_logps, batch(pairs=True)).
  grpo: the policy-update part of a GRPO step: completion_logps over B rows (prompt T/2,
        completion T/2) + the clipped surrogate with a KL term to a no-grad reference pass.
        completion_logps runs a prompt once for the rows that share it (batch(group_size=G)).
Generation is timed separately (bench/throughput.py and bench/peers.py).
"""
from __future__ import annotations

import copy

import torch

from minipost import backend
from minipost.config import GPTConfig
from minipost.logprobs import pair_sequence_logps, scored_nll_sum
from minipost.losses import dpo_loss, grpo_loss
from minipost.model import GPT
from minipost.peft import apply_peft, disable_adapters
from minipost.rollout import Rollout, completion_logps

backend.reuse_freed_memory()  # as train.py does (minipost/backend.py), so the steps time the same

SMOLLM2 = GPTConfig(vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576, d_ff=1536,
                    max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True)


def build(cfg: GPTConfig, peft: str, seed: int = 0):
    """-> (policy, reference or None): LoRA r=8 on every projection, or full training."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    if peft == "lora":
        return apply_peft(model, "lora", r=8, alpha=16), None
    return model, copy.deepcopy(model).requires_grad_(False)


def batch(cfg, B, T, seed=0, group_size=1, pairs=False):
    """-> ids [B, T], targets [B, T] scored on the second half only (a prompt, then the
    completion or reply that SFT and DPO train on). group_size G > 1: rows g*G ... g*G + G - 1
    share their prompt half, as a GRPO batch's G completions of one prompt do. pairs: rows i
    and i + B/2 share it, as a DPO batch's chosen and rejected reply to one prompt do."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    ids[:, : T // 2] = ids[::group_size, : T // 2].repeat_interleave(group_size, 0)[:B]
    if pairs:
        ids[B // 2:, : T // 2] = ids[: B // 2, : T // 2]
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets[:, : T // 2] = -100
    return ids, targets


def ref_logps(model, ref, fn):
    with torch.no_grad():
        if ref is None:
            with disable_adapters(model):
                return fn(model)
        return fn(ref)


def sft_step(model, ref, ids, targets):
    loss_sum, n = scored_nll_sum(model, ids, targets)
    (loss_sum / n).backward()
    return loss_sum / n


def dpo_step(model, ref, ids, targets):
    both = lambda m: pair_sequence_logps(m, ids, targets)  # noqa: E731  rows: chosen half, rejected half
    policy = both(model)
    reference = ref_logps(model, ref, both)
    half = ids.shape[0] // 2
    loss = dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:])[0].mean()
    loss.backward()
    return loss


def make_rollout(ids, group_size=4):
    N, T = ids.shape
    P = T // 2
    mask = torch.ones(N, T - P, dtype=torch.bool)
    return Rollout(ids, torch.ones_like(ids), torch.arange(T).expand(N, T), P, ids[:, P:], mask,
                   torch.zeros(N, T - P), torch.randn(N, generator=torch.Generator().manual_seed(0)),
                   torch.zeros(N), [""] * N, group_size)


def grpo_step(model, ref, ids, targets):
    ro = make_rollout(ids)
    logps = completion_logps(model, ro)
    reference = ref_logps(model, ref, lambda m: completion_logps(m, ro))
    adv = (ro.rewards - ro.rewards.mean()) / (ro.rewards.std() + 1e-4)
    loss, _ = grpo_loss(logps, logps.detach(), adv, ro.mask, ref_logps=reference, beta=0.04)
    loss.backward()
    return loss


STEPS = {"sft": sft_step, "dpo": dpo_step, "grpo": grpo_step}


def step_flops(model, cfg: GPTConfig, kind: str, peft: str, B: int, T: int) -> float:
    """Model FLOPs of one step. N = matmul parameters (lm_head counted, the embedding lookup
    not). Per token: forward 2N, backward 2N (activation grads) + 2N (weight grads) for full
    training, or + 2 N_lora (adapter weight grads) for LoRA; attention (causal) 2 L d T
    forward, twice that backward; lm_head (tied: the embedding matrix) only on the scored
    tokens. A no-grad reference pass costs its forward."""
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    N = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and n != "tok_emb.weight")
    head = cfg.vocab_size * cfg.d_model
    body = N - (0 if cfg.tie_embeddings else head)  # lm_head apart: it runs on scored tokens only
    attn_fwd = 2 * cfg.n_layer * cfg.d_model * T  # per token: QK^T and AV, half the square
    weight_grads = 2 * body if peft == "none" else 4 * n_lora
    per_token = (2 * body + 2 * n_lora + attn_fwd) + (2 * body + 2 * attn_fwd + weight_grads)
    per_scored = 2 * head + 2 * head + (2 * head if peft == "none" else 0)  # lm_head fwd, bwd
    ref_per_token, ref_per_scored = 2 * body + attn_fwd, 2 * head  # a no-grad reference forward
    rows = {"sft": B, "dpo": 2 * B, "grpo": B}[kind]
    tokens, scored = rows * T, rows * (T - T // 2)
    flops = tokens * per_token + scored * per_scored
    if kind != "sft":
        flops += tokens * ref_per_token + scored * ref_per_scored
    return flops
