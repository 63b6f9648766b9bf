"""Log-probabilities of given tokens under a language model's logits.

Every preference and RL loss in minipost starts from these numbers:

    token_logps[b, t]  = log softmax(logits[b, t])[targets[b, t]]
                       = logits[b, t, y] - logsumexp_v logits[b, t, v],   y = targets[b, t]
    sequence_logps[b]  = sum_t token_logps[b, t]          (reduction="sum")
                       or that sum / number of scored tokens   (reduction="mean")

Targets are pre-shifted (docs/DESIGN.md §2): logits[:, t] is scored against targets[:, t], and a
target of -100 means "not part of the completion", which contributes 0.

Numerics and memory: the logits are upcast to float32 (never computed in bf16, whose 8-bit
mantissa loses the small differences between log-probs that DPO and PPO ratios depend on).
We gather the target logit and subtract a logsumexp instead of materialising a full
log_softmax: same value, but for float32 logits autograd saves the logits themselves for the
backward pass instead of a new [B, T, V] log_softmax tensor (bf16 logits need their float32
copy either way). TRL's `selective_log_softmax` uses the same trick.
"""

from __future__ import annotations

import torch

from minipost.losses._masked import IGNORE_INDEX, masked_mean, masked_sum
from minipost.model import KVCache
from minipost.vocab_logps import vocab_logps


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # float32 at least; float64 stays float64 so tests can compare against exact references.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token.

    logits:  [B, T, V] model outputs; logits[:, t] predicts targets[:, t]
    targets: [B, T] int64 token ids, already shifted; -100 = ignored position
    returns: [B, T] float32 (float64 if logits are float64); 0 where targets == -100
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logps expects logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    x = _upcast(logits)
    active = targets != IGNORE_INDEX
    # gather needs a valid index everywhere; ignored positions read token 0 and are zeroed below.
    safe_targets = torch.where(active, targets, torch.zeros_like(targets))
    picked = x.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(x, dim=-1)
    return torch.where(active, logps, torch.zeros_like(logps))


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Log-probability of each row's scored tokens, summed or averaged.

    logits:    [B, T, V]
    targets:   [B, T], -100 = not scored
    reduction: "sum"  -> log p(completion), what DPO's derivation uses;
               "mean" -> that sum / number of scored tokens (IPO, length-normalised scores);
                         a row with no scored token gives 0, not NaN
    returns:   [B]
    """
    return _reduce(token_logps(logits, targets), targets != IGNORE_INDEX, reduction)


def _reduce(logps: torch.Tensor, active: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return masked_sum(logps, active, dim=-1)
    if reduction == "mean":
        return masked_mean(logps, active, dim=-1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def scored_logits(model, input_ids: torch.Tensor, targets: torch.Tensor, **forward_kwargs):
    """-> (logits [1, N, V] at the N scored positions (targets != -100), their targets [1, N]).

    The same numbers as model(input_ids)[scored], but only the scored rows go through
    lm_head: the [B, T, V] projection is the costliest step of a small model, and a
    completion or a masked chat trains a fraction of its tokens (an SFT step takes ~40%
    less time). forward_kwargs (doc_ids, position_ids) go to model.hidden_states.
    """
    hidden = model.hidden_states(input_ids, **forward_kwargs)
    scored = targets != IGNORE_INDEX
    return model.logits(hidden[scored])[None], targets[scored][None]


def scored_nll_sum(model, input_ids: torch.Tensor, targets: torch.Tensor, **forward_kwargs):
    """-> (summed NLL of the scored tokens, how many): losses.sft_loss_sum(*scored_logits(...)),
    with the lm_head and log-softmax a vocabulary block at a time (vocab_logps)."""
    active = targets != IGNORE_INDEX
    logps = vocab_logps(model, model.hidden_states(input_ids, **forward_kwargs)[active], targets[active])
    return -logps.sum(), active.sum()


def model_sequence_logps(model, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """sequence_logps(model(input_ids), targets, reduction) [B], with lm_head run on the
    scored positions only (scored_token_logps)."""
    active = targets != IGNORE_INDEX
    return _reduce(scored_token_logps(model, model.hidden_states(input_ids), targets, active), active, reduction)


def scored_token_logps(model, hidden: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """token_logps(model.logits(hidden), targets) [B, T] where scored [B, T] is True, 0 elsewhere:
    only the scored rows of hidden [B, T, d] go through the lm_head (vocab_logps)."""
    out = torch.zeros(scored.shape, dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    out[scored] = vocab_logps(model, hidden[scored], targets[scored])
    return out


def pair_hidden_states(model, input_ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor | None:
    """The final hidden states [2B, W, d_model] of a preference batch whose rows i and i + B
    (chosen and rejected of pair i, packing.pair_batch) begin with the same prompt, with the
    first P columns run once per pair; None when P = 0 (then run the plain pass).
    length [2B]: how many leading positions of each row are needed (later ones are padding or
    cannot change anything asked for).

    A pair's two rows agree on their first P_i tokens (the prompt: 85% of the built-in DPO
    data's tokens), and under causal attention their hidden states there are the same. Every
    pair shares the first P = min_i P_i columns, so, as rollout.completion_logps does for the G
    completions of a GRPO prompt, those run once for the B pairs with a KV cache, and all 2B rows
    run the rest, columns P .. W - 1, against their pair's copy of the cache. (Each pair's own
    P_i would save more, at the price of padding prompts and remainders to different widths.)
    The states equal the plain pass over all 2B rows (tested); gradients reach the shared
    columns from both rows.
    """
    N, W = input_ids.shape
    B = N // 2
    if N != 2 * B or B == 0:
        raise ValueError(f"a pair batch has 2B rows (B chosen, then B rejected), got {N}")
    same = (input_ids[:B] == input_ids[B:]).long().cumprod(1).sum(1)  # common prefix length [B]
    P = int(torch.minimum(same, torch.minimum(length[:B], length[B:])).min())
    if P == 0:
        return None
    cache = KVCache(len(model.layers))
    shared = model.hidden_states(input_ids[:B, :P], kv_cache=cache)  # [B, P, d]
    if P == W:
        return torch.cat([shared, shared])
    pair = torch.arange(N, device=input_ids.device) % B
    # Each row gets its pair's copy of the cached columns (index_select: deterministic backward).
    cache.k = [k.index_select(0, pair) for k in cache.k]
    cache.v = [v.index_select(0, pair) for v in cache.v]
    cache.doc_ids, cache.next_pos = cache.doc_ids.index_select(0, pair), cache.next_pos.index_select(0, pair)
    rest = model.hidden_states(input_ids[:, P:], kv_cache=cache)  # [2B, W - P, d]
    return torch.cat([shared.index_select(0, pair), rest], dim=1)


def pair_sequence_logps(model, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """model_sequence_logps of a pair batch (pair_hidden_states: each shared prompt runs once)."""
    active = targets != IGNORE_INDEX
    # The positions that matter end at a row's last scored one: later ones cannot change it.
    length = torch.where(active, torch.arange(targets.shape[1], device=targets.device) + 1, 0).amax(1)
    hidden = pair_hidden_states(model, input_ids, length)
    if hidden is None:
        return model_sequence_logps(model, input_ids, targets, reduction)
    return _reduce(scored_token_logps(model, hidden, targets, active), active, reduction)
