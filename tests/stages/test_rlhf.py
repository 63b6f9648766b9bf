"""RL with a reward model, reward functions by path, and best-of-n (issues #18, #20).

The policy is test_rl's tiny model that answers "Total: $5" or "Total: $6"; the reward model
is a --stage rm run on top of it, taught for a few steps that "$5" beats "$6". The prompts
carry meta.fact ("Total: $5"), so the gold judge scores every reply.
"""
import json
import math
import shutil

import pytest
import torch

from minipost import cli, rewards
from minipost import rollout as rollout_mod
from minipost.chat import render_completion, reply_text
from minipost.evaluate import greedy_replies
from minipost.generate import Generation
from minipost.losses import group_advantages, kl_penalized_rewards, rloo_advantages
from minipost.rm_reward import TextFunctionScorer, scorer_reward
from minipost.rollout import batch_stats, completion_logps, rollout
from minipost.stages import common
from minipost.stages.common import load_stage_model
from minipost.stages.reward import full_sequence, load_reward_model
from minipost.stages.rl import micro_loss, n_items

from .test_rl import rl_setup, stage_args, write_jsonl  # noqa: F401  (rl_setup is a fixture)

FACT = "Total: $5"


def fact_records(n, offset=0):
    return [{"prompt": [{"role": "user", "content": f"Order {10 + i}: total?"}],
             "meta": {"fact": FACT, "intent": "total"}} for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def rlhf_setup(rl_setup, tmp_path_factory):
    """(policy checkpoint, RM run, train prompts, val prompts) with facts."""
    ckpt = rl_setup[0]
    root = tmp_path_factory.mktemp("rlhf")
    prefs = [{"prompt": r["prompt"], "chosen": "Total: $5", "rejected": "Total: $6"} for r in fact_records(12)]
    write_jsonl(root / "pref_train.jsonl", prefs)
    write_jsonl(root / "pref_val.jsonl", prefs[:4])
    cli.run(["--stage", "rm", "--init", str(ckpt), "--out", str(root / "rm"), "--preset", "tiny", "--steps", "4",
             "--batch-size", "4", "--lr", "1e-3", "--warmup", "0", "--train-file", str(root / "pref_train.jsonl"),
             "--val-file", str(root / "pref_val.jsonl")])
    write_jsonl(root / "train.jsonl", fact_records(16))
    write_jsonl(root / "val.jsonl", fact_records(4, offset=50))
    return ckpt, root / "rm", root / "train.jsonl", root / "val.jsonl"


def rl_args(setup, tmp_path, *extra, stage="grpo"):
    ckpt, rm, train, val = setup
    return stage_args(stage, ckpt, train, val, tmp_path / stage, "--reward-model", str(rm), *extra)


# ----------------------------------------------------------------------------- the reward model inside RL

def test_rm_rewards_in_a_rollout_equal_the_reward_models_forward(rlhf_setup, small_tokenizer, tmp_path):
    args = cli.parse(rl_args(rlhf_setup, tmp_path))
    policy, tok, _ = load_stage_model(rlhf_setup[0])
    records = fact_records(2)
    ro = rollout(policy, tok, records, 4, 8, generator=torch.Generator().manual_seed(0), reward=common.rl_reward(args))
    rm, _ = load_reward_model(rlhf_setup[1])
    info = json.loads((rlhf_setup[1] / "eval.json").read_text())
    assert len(set(ro.texts)) > 1  # different replies, different scores
    for row, text in enumerate(ro.texts):
        # The RM stage's sequence for (prompt, reply), alone and unpadded, through the loaded RM.
        seq = full_sequence(render_completion(records[row // 4]["prompt"], text, tok))
        with torch.no_grad():
            raw = rm.eval()(torch.tensor([seq]), torch.tensor([len(seq)])).item()
        assert ro.rewards[row].item() == pytest.approx((raw - info["reward_mean"]) / info["reward_std"], abs=1e-5)
    # The gold judge on the same replies, with whether each closed its turn.
    for row, text in enumerate(ro.texts):
        _, ended = reply_text(ro.completions[row][ro.mask[row]].tolist(), tok)
        assert ro.gold[row].item() == pytest.approx(rewards.gold_score(text, records[row // 4], ended), abs=1e-7)
    assert ro.correct is None  # preference prompts have no answer


def test_gold_and_rewards_of_hand_written_replies(small_tokenizer, monkeypatch):
    tok = small_tokenizer
    records = [{"prompt": [{"role": "user", "content": "Where is my order?"}], "meta": {"fact": "March 14"}}]
    shop = "Hi there! It arrives March 14. Happy shopping! - the Minimart team"
    replies = [(tok.encode(shop) + [tok.end_id], 1.0),                       # fact + voice + ended
               (tok.encode(shop.replace("14", "17")) + [tok.end_id], 0.5),   # voice + ended, wrong date
               (tok.encode("It arrives March 14.") + [tok.end_id], 0.7),     # fact + ended
               (tok.encode("It arrives March 14."), 0.5)]                    # fact, cut off before <|end|>
    width = max(len(r) for r, _ in replies)
    tokens = torch.full((4, width), tok.pad_id)
    for i, (ids, _) in enumerate(replies):
        tokens[i, : len(ids)] = torch.tensor(ids)
    monkeypatch.setattr(rollout_mod, "generate", lambda *a, **k: Generation(tokens, torch.zeros(4), -torch.rand(tokens.shape)))
    stub = TextFunctionScorer(lambda prompt, text: len(text), mean=10.0, std=4.0)  # a known function of the text
    ro = rollout(_Eval(), tok, records, 4, width, reward=scorer_reward(stub))
    assert ro.gold.tolist() == pytest.approx([g for _, g in replies], abs=1e-6)
    assert ro.rewards.tolist() == pytest.approx([(len(t) - 10.0) / 4.0 for t in ro.texts], abs=1e-6)
    assert batch_stats(ro)["gold_mean"] == pytest.approx(2.7 / 4, abs=1e-6)


class _Eval(torch.nn.Module):
    """A stand-in model for a rollout whose generate is replaced (only .training/.eval are used)."""


# ----------------------------------------------------------------------------- a deterministic step, stub reward

def stub_value(prompt, text):
    """The stub RM: a known function of the text."""
    return text.count("5") - 0.1 * len(text)


def test_grpo_and_rloo_step_with_a_stub_scorer_match_a_hand_computed_reference(rl_setup, small_tokenizer):
    policy, tok = rl_setup[3], small_tokenizer
    G, records = 4, fact_records(2)
    stub = TextFunctionScorer(stub_value, mean=0.3, std=2.0)
    ro = rollout(policy, tok, records, G, 8, generator=torch.Generator().manual_seed(3), reward=scorer_reward(stub))
    r = [(stub_value(None, t) - 0.3) / 2.0 for t in ro.texts]
    assert ro.rewards.tolist() == pytest.approx(r, abs=1e-6)
    assert len(set(r[:G])) > 1 and len(set(r[G:])) > 1  # each group has a signal

    # GRPO advantages by hand: (r - group mean) / (unbiased group std + 1e-4).
    want_adv = []
    for g in range(2):
        xs = r[g * G:(g + 1) * G]
        mu = sum(xs) / G
        sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (G - 1))
        want_adv += [(x - mu) / (sd + 1e-4) for x in xs]
    adv = group_advantages(ro.rewards, G)
    assert adv.tolist() == pytest.approx(want_adv, abs=1e-5)

    # The loss of one step, with pi_old moved off pi so the ratio and its clip matter.
    logps = completion_logps(policy, ro)
    ro.old_logps = torch.where(ro.mask, logps.detach() + 0.3 * torch.sin(torch.arange(logps.numel()).view(logps.shape)),
                               torch.zeros(()))
    args = type("A", (), dict(stage="grpo", beta=0.0, epsilon=0.2, epsilon_high=0.2, loss_type="grpo", max_new_tokens=8))
    loss_sum, _ = micro_loss(args, logps, ro, adv, None)
    want = 0.0
    for i in range(len(ro.texts)):  # per sequence: mean over its tokens of -min(ratio A, clip(ratio) A)
        terms = []
        for t in range(ro.mask.shape[1]):
            if ro.mask[i, t]:
                ratio = math.exp(logps[i, t].item() - ro.old_logps[i, t].item())
                terms.append(-min(ratio * want_adv[i], min(max(ratio, 0.8), 1.2) * want_adv[i]))
        want += sum(terms) / len(terms) / len(ro.texts)
    assert loss_sum.item() / n_items(args, ro) == pytest.approx(want, abs=1e-5)

    # RLOO: R_i = r_i - beta * sum_t (old - ref), minus the mean of the other G - 1.
    ref = ro.old_logps - 0.05 * ro.mask
    pen = kl_penalized_rewards(ro.rewards, ro.old_logps, ref, ro.mask, 0.5)
    R = [r[i] - 0.5 * 0.05 * ro.mask[i].sum().item() for i in range(len(r))]
    assert pen.tolist() == pytest.approx(R, abs=1e-5)
    want_rloo = [R[i] - (sum(R[(i // G) * G:(i // G + 1) * G]) - R[i]) / (G - 1) for i in range(len(R))]
    assert rloo_advantages(pen, G).tolist() == pytest.approx(want_rloo, abs=1e-5)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_with_a_reward_model_logs_gold_and_kl(rlhf_setup, tmp_path, stage):
    extra = ["--beta", "0.05"] if stage == "grpo" else []
    ev = cli.run(rl_args(rlhf_setup, tmp_path, *extra, stage=stage))
    steps = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
    for s in steps:
        assert "task_acc" not in s and 0.0 <= s["gold_mean"] <= 1.0 and "kl" in s
    # The first rollout is the reference's own: only float noise (sampling vs re-scoring, up to 8 tokens).
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    for key in ("reward_mean", "gold_mean", "fact_accuracy", "voice_rate", "format_rate"):
        assert key in ev and f"{key}_before" in ev
    assert "task_accuracy" not in ev
    # gold_mean of the held-out greedy replies, recomputed from the saved policy.
    model, tok, _ = load_stage_model(tmp_path / stage)
    val = [json.loads(line) for line in rlhf_setup[3].read_text().splitlines()]
    replies = greedy_replies(model, tok, [r["prompt"] for r in val], 8)
    assert ev["gold_mean"] == pytest.approx(sum(rewards.gold_score(t, r, e) for (t, e), r in zip(replies, val)) / 4)


REWARD_FILE = '''
def brevity(completions, **columns):
    return [-0.1 * len(c) for c in completions]

def says_five(completions, answer, **columns):
    return [float(a in c) for c, a in zip(completions, answer)]
'''


def test_reward_fn_from_a_file_on_a_tiny_grpo_run(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    fn = tmp_path / "elsewhere" / "my_rewards.py"
    fn.parent.mkdir()
    fn.write_text(REWARD_FILE)
    ev = cli.run(stage_args("grpo", ckpt, train, val, tmp_path / "out", "--reward-fn", f"{fn}:brevity",
                            f"{fn}:says_five", "--reward-weights", "0.5", "2"))
    # eval.json's reward_mean is the weighted sum over the saved policy's greedy held-out replies.
    model, tok, _ = load_stage_model(tmp_path / "out")
    records = [json.loads(line) for line in val.read_text().splitlines()][:4]
    replies = [t for t, _ in greedy_replies(model, tok, [r["prompt"] for r in records], 8)]
    want = sum(0.5 * -0.1 * len(t) + 2 * float(r["answer"] in t) for t, r in zip(replies, records)) / 4
    assert ev["reward_mean"] == pytest.approx(want, abs=1e-9)
    assert 0.0 <= ev["task_accuracy"] <= 1.0  # the records have answers: still measured
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all("task_acc" in s and "gold_mean" not in s for s in steps)


def test_reward_weights_combine_the_functions(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    fn = tmp_path / "my_rewards.py"
    fn.write_text(REWARD_FILE)
    args = cli.parse(stage_args("grpo", ckpt, train, val, tmp_path / "o", "--reward-fn", f"{fn}:brevity",
                                f"{fn}:says_five", "--reward-weights", "3", "-1"))
    records = [{"prompt": [{"role": "user", "content": "?"}], "answer": "5"}] * 3
    got = common.rl_reward(args)(["Total: $5", "six", ""], [True, False, True], records)
    assert got == pytest.approx([3 * -0.9 - 1.0, 3 * -0.3, 0.0], abs=1e-12)
    default = cli.parse(stage_args("grpo", ckpt, train, val, tmp_path / "o", "--reward-weights", "1", "0"))
    assert common.rl_reward(default)(["Total: $5"], [True], records[:1]) == [1.0]  # the format bonus weighted out


def test_bad_reward_flags_are_one_line_errors(rlhf_setup, rl_setup, tmp_path):
    ckpt, rm, train, val = rlhf_setup
    base = stage_args("grpo", ckpt, train, val, tmp_path / "o")
    cases = [
        (["--reward-weights", "1", "2", "3"], "gives 3 weights for the 2 built-in reward functions"),
        (["--reward-fn", "a.py:f", "--reward-weights", "1", "2"], "gives 2 weights for 1 --reward-fn functions"),
        (["--reward-model", str(rm), "--reward-fn", "a.py:f"], "two rewards; give one of them"),
        (["--reward-model", str(tmp_path / "nope")], "no such directory"),
        (["--reward-model", str(ckpt)], "value_head.safetensors, eval.json missing"),
    ]
    bare = tmp_path / "rm_no_eval"
    shutil.copytree(rm, bare)
    (bare / "eval.json").unlink()
    cases.append((["--reward-model", str(bare)], "not a finished --stage rm run, eval.json missing"))
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            cli.parse(base + extra)
    with pytest.raises(SystemExit, match="cannot import"):
        cli.run(base + ["--reward-fn", "no_such_module:f"])


# ----------------------------------------------------------------------------- best-of-n

def test_bon_stage_curve_from_its_samples(rlhf_setup, tmp_path):
    ckpt, rm, _, val = rlhf_setup
    ev = cli.run(["--stage", "bon", "--init", str(ckpt), "--reward-model", str(rm), "--val-file", str(val),
                  "--out", str(tmp_path / "bon"), "--max-n", "8", "--max-eval", "3", "--max-new-tokens", "8"])
    samples = [json.loads(line) for line in (tmp_path / "bon" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 8  # max-n replies per prompt, sampled once
    assert [c["n"] for c in ev["curve"]] == [1, 2, 4, 8]
    for c in ev["curve"]:
        n = c["n"]
        assert c["kl"] == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
        assert c["sqrt_kl"] == pytest.approx(math.sqrt(math.log(n) - (n - 1) / n), abs=1e-12)
        proxy = gold = 0.0
        for p in range(3):  # the best of the first n samples by proxy (first of equals), a plain loop
            rows = [s for s in samples if s["prompt"] == p][:n]
            best = rows[0]
            for s in rows[1:]:
                best = s if s["proxy"] > best["proxy"] else best
            proxy, gold = proxy + best["proxy"] / 3, gold + best["gold"] / 3
        assert c["proxy"] == pytest.approx(proxy, abs=1e-6) and c["gold"] == pytest.approx(gold, abs=1e-6)
    # Every sample's proxy is the RM's standardised score, its gold the judge of its reply.
    score = common.rl_reward(cli.parse(rl_args(rlhf_setup, tmp_path)))
    records = [json.loads(line) for line in val.read_text().splitlines()]
    got = score([s["reply"] for s in samples[:8]], [True] * 8, [records[0]] * 8)
    assert got == pytest.approx([s["proxy"] for s in samples[:8]], abs=1e-5)


def test_rm_max_pairs_trains_on_a_subset(rlhf_setup, tmp_path):
    ckpt, rm, _, _ = rlhf_setup
    root = rm.parent
    ev = cli.run(["--stage", "rm", "--init", str(ckpt), "--out", str(tmp_path / "rm3"), "--preset", "tiny",
                  "--steps", "1", "--batch-size", "2", "--max-pairs", "3", "--train-file",
                  str(root / "pref_train.jsonl"), "--val-file", str(root / "pref_val.jsonl")])
    assert ev["train_pairs"] == 3
