"""Rollouts for RL from verifiable rewards: sample, mask, score.

One RL step starts by asking the policy for `group_size` completions of each prompt.
All prompts x group_size rows go through ONE batched, KV-cached `generate` call, with each
prompt repeated group_size times in a row, so the G samples of prompt g are rows
g*G ... g*G + G - 1 (the layout `group_advantages` and `rloo_advantages` expect).

Layout. `generate` left-pads the prompts to a common width P, so every completion starts
in column P. A rollout keeps exactly that layout:

    sequences [N, P + C]   left padding | prompt | completion (pad after the stop token)
    completions [N, C]     = sequences[:, P:]
    mask        [N, C]     True on completion tokens up to AND including the first stop
                           token (<|end|> or eos); a row that never stops is all True
    old_logps   [N, C]     log pi_old(token) recorded while sampling, 0 where mask is False

`completion_logps` re-scores the completions with a fresh forward pass over sequences[:, :-1]
(same left padding, doc ids and positions as generation, so the numbers agree with the
recorded ones): logits column P - 1 + t predicts completion token t, i.e. the pre-shifted
targets of docs/DESIGN.md §2 restricted to the completion columns. The G rows of a prompt share
its forward pass through a KV cache, in training as in generation.

Reward of a completion, on the reply text up to the first control token: one function
reward(texts, ended, records) -> [float] (stages/common.rl_reward builds it from the flags):

    default            r = task_reward(text, answer) + format_reward(text)   (the built-in
                       reward functions of reward_fns.py; format bonus only if the reply
                       closed its turn with <|end|>)
    --reward-fn F...   r = sum_k w_k F_k(completions, **columns)   (reward_fns.combined_reward)
    --reward-model RUN r = the RM's normalised score of (prompt, reply)   (rm_reward.py)

Requiring <|end|> for the format bonus is our choice: a reply cut off at max_new_tokens is
not well formatted, and the small bonus teaches the policy to finish its turn.

Two numbers are measured beside the reward and never trained on: `correct`, the task reward
alone, where every record has a whole-number "answer" (the built-in RL prompts), and `gold`,
rewards.gold_score (fact stated, shop voice, ended properly), where every record carries
meta.fact (the built-in preference prompts an RM run trains on).

Old log-probs are those of the temperature-1 model (Generation.logps), which is the policy
the losses optimise. Sampling at temperature != 1 is then an exploration choice whose
off-policy-ness the ratio does not correct (like rollouts from a separate inference engine).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost import rewards as R
from minipost.chat import generation_prompt, reply_text
from minipost.generate import generate, left_pad
from minipost.logprobs import scored_token_logps
from minipost.model import KVCache
from minipost.seeding import rng


@dataclass
class Rollout:
    sequences: torch.Tensor  # [N, P + C] left-padded prompt then completion
    doc_ids: torch.Tensor  # [N, P + C] 0 on left padding, 1 on real tokens
    position_ids: torch.Tensor  # [N, P + C] RoPE positions counting real tokens only
    prompt_width: int  # P: the column where every completion starts
    completions: torch.Tensor  # [N, C] sampled ids (pad after the stop token)
    mask: torch.Tensor  # [N, C] bool, completion tokens through the first stop token
    old_logps: torch.Tensor  # [N, C] float32 log-probs at sampling time, 0 off the mask
    rewards: torch.Tensor  # [N] the reward trained on (module docstring)
    correct: torch.Tensor | None  # [N] task reward alone (1.0 right total, 0.0 otherwise), or None
    texts: list[str]  # [N] reply text (up to the first control token)
    group_size: int
    gold: torch.Tensor | None = None  # [N] rewards.gold_score of each reply, or None

    @property
    def lengths(self) -> torch.Tensor:
        """[N] completion tokens per row, the stop token included."""
        return self.mask.sum(1)

    def rows(self, index) -> "Rollout":
        """The rollout restricted to some rows (a slice or index tensor), for minibatches."""
        if isinstance(index, slice):
            pick = lambda x: x[index]  # noqa: E731
            texts = self.texts[index]
        else:
            index = torch.as_tensor(index, dtype=torch.long)
            pick = lambda x: x[index.to(x.device)]  # noqa: E731
            texts = [self.texts[i] for i in index.tolist()]
        maybe = lambda x: None if x is None else pick(x)  # noqa: E731
        return Rollout(pick(self.sequences), pick(self.doc_ids), pick(self.position_ids), self.prompt_width,
                       pick(self.completions), pick(self.mask), pick(self.old_logps), pick(self.rewards),
                       maybe(self.correct), texts, self.group_size, maybe(self.gold))


def completion_mask(tokens: torch.Tensor, stop_ids) -> torch.Tensor:
    """True on each row's tokens up to and including its first stop token.

    tokens:   [N, C] generated ids
    stop_ids: iterable of ids that end a completion
    returns:  [N, C] bool; a row without a stop token is True everywhere (cut at max length)
    """
    stop = torch.isin(tokens, torch.tensor(sorted(set(stop_ids)), dtype=tokens.dtype, device=tokens.device))
    # Stops strictly before column t: 0 means t is at or before the first stop.
    stops_before = stop.long().cumsum(1) - stop.long()
    return stops_before == 0


def builtin_reward(texts: list[str], ended: list[bool], records: list[dict]) -> list[float]:
    """The default reward: the built-in Minimart functions of reward_fns.py, weights 1
    (task_reward + format_reward where the reply ended)."""
    from minipost.reward_fns import combined_reward, load_reward_fns

    return combined_reward(load_reward_fns(None), None, texts, records, ended)


def task_correct(texts: list[str], records: list[dict]) -> list[float] | None:
    """rewards.task_reward of each reply where every record has a whole-number "answer", else None."""
    from minipost.reward_fns import is_whole_number

    if not all(is_whole_number(r.get("answer")) for r in records):
        return None
    return [R.task_reward(t, r["answer"]) for t, r in zip(texts, records)]


def gold_scores(texts: list[str], ended: list[bool], records: list[dict]) -> list[float] | None:
    """rewards.gold_score of each reply where every record carries meta.fact, else None."""
    if not all(isinstance(r.get("meta"), dict) and isinstance(r["meta"].get("fact"), str) for r in records):
        return None
    return [R.gold_score(t, r, e) for t, e, r in zip(texts, ended, records)]


@torch.no_grad()
def rollout(model, tokenizer, records: list[dict], group_size: int, max_new_tokens: int, *,
            temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
            generator: torch.Generator | None = None, reward=None) -> Rollout:
    """Sample group_size completions for each record and score them.

    records: RL records {"prompt": [messages ending with a user turn], ...other columns}
    reward:  reward(texts, ended, records) -> [float] (None: builtin_reward); records holds
             the record of each row (each repeated group_size times)
    returns: a Rollout with N = len(records) * group_size rows, grouped consecutively
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    was_training = model.training
    model.eval()
    prompts = [generation_prompt(r["prompt"], tokenizer) for r in records for _ in range(group_size)]
    stop_ids = [tokenizer.end_id, tokenizer.eos_id]
    gen = generate(model, prompts, max_new_tokens, stop_ids=stop_ids, pad_id=tokenizer.pad_id,
                   temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, use_cache=True)
    model.train(was_training)

    device = gen.tokens.device
    ids, doc, pos = left_pad(prompts, tokenizer.pad_id, device)
    P = ids.shape[1]
    mask = completion_mask(gen.tokens, stop_ids)
    n_new = gen.tokens.shape[1]
    # Completion tokens are real tokens of the row: doc id 1, positions continuing the prompt's.
    steps = torch.arange(1, n_new + 1, device=device)
    sequences = torch.cat([ids, gen.tokens], 1)
    doc_ids = torch.cat([doc, torch.ones_like(gen.tokens)], 1)
    position_ids = torch.cat([pos, pos[:, -1:] + steps], 1)

    texts, ended = [], []
    for tokens, keep in zip(gen.tokens.tolist(), mask.tolist()):
        text, done = reply_text([t for t, k in zip(tokens, keep) if k], tokenizer)
        texts.append(text)
        ended.append(done)
    rows = [r for r in records for _ in range(group_size)]
    rewards = (reward or builtin_reward)(texts, ended, rows)
    as_tensor = lambda xs: None if xs is None else torch.tensor(xs, device=device)  # noqa: E731  float32
    old = torch.where(mask, gen.logps.float(), torch.zeros((), device=device))
    return Rollout(sequences, doc_ids, position_ids, P, gen.tokens, mask, old, as_tensor(rewards),
                   as_tensor(task_correct(texts, rows)), texts, group_size, as_tensor(gold_scores(texts, ended, rows)))


def completion_logps(model, ro: Rollout, return_hidden: bool = False, share_prompt: bool = True):
    """Log-probs of the rollout's completion tokens under `model` (with grad if enabled).

    returns: logps [N, C] float32, 0 off the mask; with return_hidden also the final
             hidden states at the predicting positions, hidden [N, C, d_model]
             (hidden[:, t] is the state that chose completion token t: a critic's input)

    The G completions of a prompt share its keys and values, so, as in generation, the
    prompt runs once per distinct prompt with a KV cache, the cache is copied to each of
    its rows, and only the completions run per row. Gradients flow through the shared
    keys and values as through any tensor: the result equals a forward pass over every
    full row (tested), at a fraction of the cost when G is large and prompts are long.
    share_prompt=False always takes the plain pass (the reference for that test).
    """
    P = ro.prompt_width
    prompts, inverse = torch.unique(ro.sequences[:, :P], dim=0, return_inverse=True)
    if not share_prompt or len(prompts) == len(ro.texts):  # nothing shared: one plain pass over the full rows
        hidden = model.hidden_states(ro.sequences[:, :-1], doc_ids=ro.doc_ids[:, :-1],
                                     position_ids=ro.position_ids[:, :-1])[:, P - 1:]
    else:
        first = torch.full((len(prompts),), len(ro.texts), device=inverse.device).scatter_reduce(
            0, inverse, torch.arange(len(ro.texts), device=inverse.device), reduce="amin")
        cache = KVCache(len(model.layers))
        hidden = model.hidden_states(ro.sequences[first, :P], doc_ids=ro.doc_ids[first, :P],
                                     position_ids=ro.position_ids[first, :P], kv_cache=cache)
        # index_select, not x[inverse]: the backward of x[inverse] adds the rows' gradients into
        # their shared prompt with atomic adds spread over the threads, in an order that varies
        # run to run (PPO's shuffled minibatches measured it); index_select's adds them in order.
        hidden = hidden[:, -1:].index_select(0, inverse)
        cache.k = [k.index_select(0, inverse) for k in cache.k]
        cache.v = [v.index_select(0, inverse) for v in cache.v]
        cache.doc_ids, cache.next_pos = cache.doc_ids[inverse], cache.next_pos[inverse]
        if ro.sequences.shape[1] - 1 > P:  # the rest of each completion, against its copy of the cache
            more = model.hidden_states(ro.sequences[:, P:-1], doc_ids=ro.doc_ids[:, P:-1],
                                       position_ids=ro.position_ids[:, P:-1], kv_cache=cache)
            hidden = torch.cat([hidden, more], 1)
    # Only the scored tokens (through the first stop) go through lm_head: the [N, C, V]
    # logits of the padding after a stop would be thrown away (logprobs.scored_token_logps).
    logps = scored_token_logps(model, hidden, ro.completions, ro.mask)
    return (logps, hidden) if return_hidden else logps


def batch_stats(ro: Rollout) -> dict[str, float]:
    """What every RL stage logs about a rollout: reward mean/std, accuracy (where the records
    have answers), gold_mean (where they carry facts), length, and the share of groups whose
    rewards are all equal (they give zero advantage, no signal)."""
    r = ro.rewards.double()
    stats = {"reward_mean": r.mean().item(), "reward_std": r.std(unbiased=True).item() if r.numel() > 1 else 0.0}
    if ro.correct is not None:
        stats["task_acc"] = ro.correct.double().mean().item()
    if ro.gold is not None:
        stats["gold_mean"] = ro.gold.double().mean().item()
    stats["completion_len"] = ro.lengths.double().mean().item()
    if ro.group_size > 1:
        groups = r.view(-1, ro.group_size)
        stats["zero_std_frac"] = (groups.max(1).values == groups.min(1).values).double().mean().item()
    return stats


# ----------------------------------------------------------------------------- the RL stages' draws and scorers
# (stages/rl.py and stages/ppo.py share these)

def step_prompts(train: list[dict], n: int, seed: int, step: int) -> list[dict]:
    """The prompts of step `step`: a function of (seed, step), so --resume sees the same ones."""
    g = rng(seed, "prompts", step)
    return [train[i] for i in torch.randint(len(train), (n,), generator=g).tolist()]


def sampling_generator(seed: int, step: int, device="cpu") -> torch.Generator:
    """The generator that samples step `step`'s completions (each rank passes its own step index)."""
    return rng(seed, "sampling", step, device=device)


def rollout_kl(ro: Rollout, ref_logps: torch.Tensor) -> float:
    """The logged `kl`: sum_t (log pi_old(y_t) - log pi_ref(y_t)) over each completion, mean
    over the batch (a sample estimate of KL(pi_old || pi_ref) per completion, in nats)."""
    from minipost.losses import masked_sum

    return masked_sum(ro.old_logps - ref_logps, ro.mask, dim=1).mean().item()


def batched(fn, ro: Rollout, rows: int) -> torch.Tensor:
    """fn over micro-batches of `rows` rollout rows, concatenated along the rows."""
    return torch.cat([fn(ro.rows(slice(i, i + rows))) for i in range(0, len(ro.texts), rows)])


def reference_scorer(model, coef: float, batch_size: int, frozen_copy=None):
    """-> None when coef == 0, else a function Rollout -> ref log-probs [N, C] (no grad).

    frozen_copy None: the policy itself inside peft.disable_adapters (under PEFT: no second
    copy of the weights). Full fine-tuning passes a frozen copy of the starting model.
    """
    if coef == 0:
        return None
    if frozen_copy is None:
        from minipost.peft import disable_adapters

        def score(ro):
            with torch.no_grad(), disable_adapters(model):
                return batched(lambda mb: completion_logps(model, mb), ro, batch_size)
        return score
    frozen_copy.eval().requires_grad_(False)

    def score(ro):
        with torch.no_grad():
            return batched(lambda mb: completion_logps(frozen_copy, mb), ro, batch_size)
    return score
