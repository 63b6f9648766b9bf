"""PPO stage: reward shaping against an explicit loop, a smoke run on the tiny preset."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost import checkpoint, cli
from minipost.stages.ppo import shaped_rewards
from minipost.value_head import ValueHead
from tests.stages.test_rl import changed, learns_the_toy, rl_setup, stage_args  # noqa: F401  (rl_setup: a fixture)


def shaped_loop(scores, old, ref, mask, kl_coef):
    N, C = len(mask), len(mask[0])
    out = [[0.0] * C for _ in range(N)]
    for i in range(N):
        last = max(t for t in range(C) if mask[i][t])
        for t in range(C):
            if mask[i][t]:
                out[i][t] = -kl_coef * (old[i][t] - ref[i][t]) if ref is not None else 0.0
        out[i][last] += scores[i]
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.floats(0, 1), st.booleans(), st.integers(0, 2**31 - 1))
def test_shaped_rewards_match_a_loop(N, C, kl_coef, with_ref, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, C + 1, (N,), generator=g)
    mask = torch.arange(C)[None] < lengths[:, None]
    old = -torch.rand(N, C, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(N, C, generator=g, dtype=torch.float64) * 3 if with_ref else None
    scores = torch.rand(N, generator=g, dtype=torch.float64) * 1.1
    got = shaped_rewards(scores, old, ref, mask, kl_coef)
    expected = shaped_loop(scores.tolist(), old.tolist(), None if ref is None else ref.tolist(), mask.tolist(), kl_coef)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_score_sits_on_the_last_completion_token_even_with_gaps():
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    r = shaped_rewards(torch.tensor([1.0, 2.0]), torch.zeros(2, 4), None, mask, 0.1)
    assert r.tolist() == [[0, 0, 1.0, 0], [0, 0, 0, 2.0]]
    with pytest.raises(ValueError, match="at least one token"):
        shaped_rewards(torch.ones(1), torch.zeros(1, 3), None, torch.zeros(1, 3, dtype=torch.bool), 0.1)


def test_ppo_smoke_run(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    out = tmp_path / "ppo"
    ev = cli.run(stage_args("ppo", ckpt, train, val, out, "--kl-coef", "0.05", "--ppo-epochs", "2"))
    for key in ("task_accuracy_before", "task_accuracy"):
        assert 0.0 <= ev[key] <= 1.0 and ev[key] * 4 == round(ev[key] * 4)
    n_changed, n = changed(ckpt, out)
    assert n_changed == n
    head = ValueHead.load(checkpoint.checkpoint_dir(out) / "value_head.safetensors")  # in the unit
    assert head.proj.weight.abs().sum() > 0  # started at zero, learned from the returns
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        for key in ("reward_mean", "reward_std", "task_acc", "kl", "clip_frac", "vf_clip_frac", "value_loss",
                    "completion_len"):
            assert key in s
        assert 0 <= s["clip_frac"] <= 1 and 0 <= s["vf_clip_frac"] <= 1 and s["value_loss"] >= 0
    assert steps[1]["kl"] != 0  # the frozen reference differs from the updated policy


def test_ppo_resume_restores_the_value_head(rl_setup, tmp_path):
    ckpt, train, val, _ = rl_setup
    out = tmp_path / "cut"
    with pytest.raises(SystemExit):
        cli.run(stage_args("ppo", ckpt, train, val, out, "--interrupt-at", "1"))
    saved = ValueHead.load(checkpoint.checkpoint_dir(out) / "value_head.safetensors").proj.weight.clone()
    assert saved.abs().sum() > 0
    cli.run(stage_args("ppo", ckpt, train, val, out, "--resume"))
    state = json.loads((checkpoint.checkpoint_dir(out) / "state.json").read_text())
    assert state["counters"]["step"] == 2
    # The value head's parameter group kept its own learning-rate scale through the resume.
    assert any(g.get("lr_scale") == pytest.approx(1.0) for g in state["param_groups"])


def test_ppo_learns_the_toy_task(rl_setup, tmp_path):
    learns_the_toy("ppo", rl_setup, tmp_path / "ppo")
