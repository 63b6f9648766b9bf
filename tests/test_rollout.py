"""Rollouts: grouping, completion masks, old log-probs against a fresh forward, rewards."""
import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost import rewards, rollout as rollout_mod
from minipost.chat import generation_prompt, reply_text
from minipost.config import preset
from minipost.generate import Generation
from minipost.logprobs import token_logps
from minipost.model import GPT
from minipost.rollout import batch_stats, builtin_reward, completion_logps, completion_mask, rollout


class EndBiasedGPT(GPT):
    """A random tiny GPT whose <|end|> logit is raised, so sampled completions stop often."""

    def __init__(self, cfg, end_id, bias=3.0):
        super().__init__(cfg)
        self.end_id, self.bias = end_id, bias

    def logits(self, hidden):  # the vocabulary projection every caller goes through (forward too)
        logits = super().logits(hidden).clone()
        logits[..., self.end_id] += self.bias
        return logits


def records(n):
    rng = random.Random(n)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        text = f"Order #{i}\nItems:\n1 x Mug at ${a}\n" + ("1 x Lamp at $2\n" * i) + f"1 x Tray at ${b}\n\nTotal?"
        out.append({"prompt": [{"role": "user", "content": text}], "answer": str(a + b + 2 * i)})
    return out


def test_completion_mask_matches_a_loop():
    rng = random.Random(0)
    stops = {5, 9}
    for _ in range(50):
        tokens = torch.tensor([[rng.choice([1, 2, 3, 5, 9]) for _ in range(7)] for _ in range(4)])
        got = completion_mask(tokens, stops)
        for r, row in enumerate(tokens.tolist()):
            first = next((t for t, x in enumerate(row) if x in stops), None)
            expected = [first is None or t <= first for t in range(len(row))]
            assert got[r].tolist() == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=9), min_size=1, max_size=5).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
def test_completion_mask_is_a_prefix_ending_at_the_first_stop(rows):
    tokens = torch.tensor(rows)
    m = completion_mask(tokens, [0])
    for row, keep in zip(rows, m.tolist()):
        n = sum(keep)
        assert keep == [True] * n + [False] * (len(row) - n)  # a prefix
        assert 0 not in row[: n - 1]  # no stop before the last kept token
        assert row[n - 1] == 0 or n == len(row)  # ends on the stop, or runs to the end


def test_rollout_groups_masks_and_old_logps(small_tokenizer):
    tok = small_tokenizer
    torch.manual_seed(0)
    model = EndBiasedGPT(preset("tiny", tok.vocab_size), tok.end_id).eval()
    recs = records(3)
    G = 4
    ro = rollout(model, tok, recs, G, max_new_tokens=10, generator=torch.Generator().manual_seed(1))
    N, C = ro.completions.shape
    assert N == len(recs) * G and ro.group_size == G
    prompts = [generation_prompt(r["prompt"], tok) for r in recs]
    P = ro.prompt_width
    assert P == max(len(p) for p in prompts)
    stops = {tok.end_id, tok.eos_id}
    n_stopped = 0
    for row in range(N):
        # Rows g*G ... g*G + G - 1 answer prompt g: its tokens, left padded.
        real = ro.doc_ids[row, :P].bool()
        assert ro.sequences[row, :P][real].tolist() == prompts[row // G]
        comp = ro.completions[row].tolist()
        first = next((t for t, x in enumerate(comp) if x in stops), None)
        n = C if first is None else first + 1
        assert ro.mask[row].tolist() == [t < n for t in range(C)]
        n_stopped += first is not None
        # Old log-probs equal a fresh forward over the unpadded prompt + completion.
        s = torch.tensor(prompts[row // G] + comp[:n])
        targets = torch.full((len(s) - 1,), -100)
        targets[len(prompts[row // G]) - 1:] = s[len(prompts[row // G]):]
        with torch.no_grad():
            fresh = token_logps(model(s[:-1][None]), targets[None])[0, len(prompts[row // G]) - 1:]
        assert (fresh - ro.old_logps[row, :n]).abs().max().item() <= 1e-5
        assert (ro.old_logps[row, n:] == 0).all()
        # Rewards are rewards.task_reward (+ the format bonus when the reply closed its turn).
        text, ended = reply_text(comp[:n], tok)
        task = rewards.task_reward(text, recs[row // G]["answer"])
        assert ro.correct[row].item() == task
        assert ro.rewards[row].item() == task + (rewards.format_reward(text) if ended else 0.0)
    assert 0 < n_stopped < N  # both stopped rows and rows cut at max_new_tokens were checked
    with torch.no_grad():
        batched = completion_logps(model, ro)
    assert (batched - ro.old_logps).abs().max().item() <= 1e-5


def test_rewards_are_task_plus_format_and_grouped(small_tokenizer, monkeypatch):
    tok = small_tokenizer
    recs = [{"prompt": [{"role": "user", "content": "Total?"}], "answer": "7"},
            {"prompt": [{"role": "user", "content": "Total please?"}], "answer": "12"}]
    replies = [  # (completion ids, expected reward, expected task reward)
        (tok.encode("Total: $7") + [tok.end_id], 1.1, 1.0),
        (tok.encode("Total: $8") + [tok.end_id], 0.1, 0.0),
        (tok.encode("Total: $7"), 1.0, 1.0),  # cut off before <|end|>: no format bonus
        (tok.encode("Total: $7 Total: $7") + [tok.end_id], 1.0, 1.0),  # two markers: no bonus
        (tok.encode("it is 12") + [tok.end_id], 0.0, 0.0),
        (tok.encode("Total: $12") + [tok.eos_id], 1.0, 1.0),  # eos stops it, but not a closed turn
        (tok.encode("Total: $12") + [tok.end_id] + tok.encode(" Total: $3"), 1.1, 1.0),  # after the stop: ignored
        (tok.encode("Total: $1") + [tok.user_id] + tok.encode("Total: $12"), 0.0, 0.0),  # a new turn ends the reply
    ]
    width = max(len(r) for r, _, _ in replies)
    tokens = torch.full((len(replies), width), tok.pad_id)
    for i, (ids, _, _) in enumerate(replies):
        tokens[i, : len(ids)] = torch.tensor(ids)

    def fake_generate(model, prompts, max_new_tokens, **kw):
        assert len(prompts) == 8 and prompts[:4] == [generation_prompt(recs[0]["prompt"], tok)] * 4
        assert prompts[4:] == [generation_prompt(recs[1]["prompt"], tok)] * 4
        return Generation(tokens, torch.zeros(8, dtype=torch.long), -torch.rand(tokens.shape))

    monkeypatch.setattr(rollout_mod, "generate", fake_generate)
    model = GPT(preset("tiny", tok.vocab_size))
    ro = rollout(model, tok, recs, 4, max_new_tokens=width)
    assert torch.equal(ro.rewards, torch.tensor([r for _, r, _ in replies]))  # both float32
    assert torch.equal(ro.correct, torch.tensor([c for _, _, c in replies]))
    assert builtin_reward(["Total: $7", "Total: $7"], [True, False], recs[:1] * 2) == [1.1, 1.0]
    assert ro.gold is None  # RL records carry no meta.fact
    stats = batch_stats(ro)
    r = torch.tensor([r for _, r, _ in replies]).double()
    assert abs(stats["reward_mean"] - r.mean().item()) < 1e-12
    assert abs(stats["reward_std"] - r.std().item()) < 1e-12
    assert stats["task_acc"] == 5 / 8
    assert stats["zero_std_frac"] == 0.0


def test_zero_std_fraction_counts_groups_with_equal_rewards():
    ro = type("R", (), {})()
    ro.rewards = torch.tensor([1.0, 1.0, 0.1, 0.1, 0.0, 1.1])
    ro.correct = torch.zeros(6)
    ro.gold = None
    ro.mask = torch.ones(6, 3, dtype=torch.bool)
    ro.lengths = ro.mask.sum(1)
    ro.group_size = 2
    assert batch_stats(ro)["zero_std_frac"] == 2 / 3
    assert batch_stats(ro)["completion_len"] == 3.0
    assert "gold_mean" not in batch_stats(ro)
    # Prompts with facts and without answers: gold_mean is logged, task_acc is not.
    ro.correct, ro.gold = None, torch.tensor([1.0, 0.5, 0.0, 0.2, 0.3, 0.7])
    stats = batch_stats(ro)
    assert "task_acc" not in stats and abs(stats["gold_mean"] - 2.7 / 6) < 1e-7


def test_shared_prompt_pass_equals_full_rows_in_values_and_gradients(small_tokenizer):
    tok = small_tokenizer
    torch.manual_seed(1)
    model = EndBiasedGPT(preset("tiny", tok.vocab_size), tok.end_id)
    ro = rollout(model, tok, records(3), 4, max_new_tokens=9, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(ro.mask.shape)
    results = []
    for share in (True, False):
        model.zero_grad()
        logps, hidden = completion_logps(model, ro, return_hidden=True, share_prompt=share)
        ((logps * weights).sum() + hidden.square().mean()).backward()
        results.append((logps.detach(), hidden.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ha, ga), (b, hb, gb) = results
    assert a.shape == ro.mask.shape and hidden.shape[:2] == ro.mask.shape
    assert (a - b).abs().max().item() <= 1e-5 and (ha - hb).abs().max().item() <= 1e-4
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)
    # A subset of rows in any order (PPO's shuffled minibatches) gives the same rows' numbers.
    idx = torch.tensor([7, 0, 5, 1, 2])
    with torch.no_grad():
        sub = completion_logps(model, ro.rows(idx))
    assert (sub - a[idx]).abs().max().item() <= 1e-5


def test_shared_prompt_gradients_repeat_bit_for_bit_on_two_threads(small_tokenizer):
    """The rows' gradients are added into their shared prompt's keys and values in a fixed order.
    With x[inverse] (before) torch added them with atomic adds spread over the threads, so two
    threads gave different gradients from one call to the next on PPO's shuffled minibatches;
    64 rows of long prompts make the keys large enough to be split between the threads."""
    tok = small_tokenizer
    torch.manual_seed(3)
    model = EndBiasedGPT(preset("tiny", tok.vocab_size), tok.end_id, bias=0.0)
    ro = rollout(model, tok, records(16), 4, max_new_tokens=4, generator=torch.Generator().manual_seed(4))
    mb = ro.rows(torch.randperm(len(ro.texts), generator=torch.Generator().manual_seed(5)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(8):
            model.zero_grad()
            completion_logps(model, mb).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    for again in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], again))
