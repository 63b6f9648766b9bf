"""The held-out numbers every stage writes (stages/common.py): the key rule for the test
split (val_loss -> test_loss, name -> test_name, starting values name_before), when a test
split and general questions are measured, the results table, and eval.json of tiny runs."""
import json
from argparse import Namespace

from minipost import checkpoint, cli, evaluate
from minipost.stages import common
from tests.stages.test_sft import base_dir  # noqa: F401  (the fixture: a tiny random toy model)
from tests.tiny_models import make_hf_dir


def fake_measure(split):
    """A stand-in for a stage's measurement: numbers that say which split they came from."""
    return {"val_loss": float(len(split)), "fact_accuracy": sum(split) / 10, "by_intent": {"x": split[0]}}


def toy_args(init=None, max_eval=200):
    return Namespace(init=init, max_eval=max_eval)


def test_key_rule_on_val_and_test():
    out = common.held_out(toy_args(), None, None, fake_measure, [1, 2], [3, 4, 5])
    assert out == {"val_loss": 2.0, "fact_accuracy": 0.3, "by_intent": {"x": 1},
                   "test_loss": 3.0, "test_fact_accuracy": 1.2, "test_by_intent": {"x": 3}}
    assert common.as_before(out) == {"val_loss_before": 2.0, "fact_accuracy_before": 0.3,
                                     "by_intent_before": {"x": 1}, "test_loss_before": 3.0,
                                     "test_fact_accuracy_before": 1.2, "test_by_intent_before": {"x": 3}}
    # no test split: the validation numbers alone, under the names they always had
    assert common.held_out(toy_args(), None, None, fake_measure, [1, 2]) == fake_measure([1, 2])
    assert [common.test_name(k) for k in ("val_loss", "pair_accuracy", "val_task_accuracy")] == [
        "test_loss", "test_pair_accuracy", "test_task_accuracy"]


def test_general_questions_only_on_a_pretrained_base(monkeypatch, tmp_path):
    asked = []

    def fake_general(model, tok, records):
        asked.append(len(records))
        return {"general_accuracy": len(records) / 100, "general_accuracy_by_kind": {"capital": 1.0}}

    monkeypatch.setattr(evaluate, "general_accuracy", fake_general)
    # a run built on SmolLM2 two stages back (config.json "base" followed)
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    checkpoint.write_json({"stage": "sft", "base": "smollm2"}, sft / "config.json")
    checkpoint.write_json({"stage": "dpo", "base": str(sft)}, dpo / "config.json")
    toy = tmp_path / "toy"
    checkpoint.write_json({"stage": "pretrain", "base": None}, toy / "config.json")
    assert [common.on_pretrained_base(x) for x in ("smollm2", sft, dpo, toy, None)] == [True, True, True, False, False]

    out = common.held_out(toy_args(dpo, max_eval=7), None, None, fake_measure, [1], [2])
    assert asked == [7, 7]  # --max-eval questions of general_val, then of general_test
    assert out == {**fake_measure([1]), "test_loss": 1.0, "test_fact_accuracy": 0.2, "test_by_intent": {"x": 2},
                   "general_accuracy": 0.07, "general_accuracy_by_kind": {"capital": 1.0},
                   "test_general_accuracy": 0.07, "test_general_accuracy_by_kind": {"capital": 1.0}}
    asked.clear()
    assert common.held_out(toy_args(toy), None, None, fake_measure, [1]) == fake_measure([1])
    assert common.held_out(toy_args(dpo), None, None, fake_measure, [1], general=False) == fake_measure([1])
    assert asked == []


def test_test_path_follows_the_validation_data(tmp_path):
    mine = tmp_path / "my_test.jsonl"
    assert common.test_path(mine, None, "sft_test") == mine
    assert common.test_path(mine, tmp_path / "my_val.jsonl", "sft_test") == mine
    assert common.test_path(None, tmp_path / "my_val.jsonl", "sft_test") is None  # own data: no test numbers
    assert common.test_path(None, None, "sft_test").name == "sft_test.jsonl"


def test_results_table_has_a_test_column():
    table = common.results_table({"val_loss": 1.5, "val_loss_before": 2.25, "test_loss": 1.75,
                                  "test_loss_before": 2.5, "voice_rate": 0.5, "test_voice_rate": 0.25,
                                  "wall_time_s": 3.0})
    assert table.splitlines() == [
        "  held-out          value       before         test  test before",
        "  val_loss         1.5000       2.2500       1.7500       2.5000",
        "  voice_rate       0.5000                    0.2500"]
    assert "test" not in common.results_table({"pair_accuracy": 0.75})


# ----------------------------------------------------------------------------- tiny runs

TINY = ["--steps", "1", "--batch-size", "4", "--max-eval", "3", "--log-every", "1"]


def test_sft_on_the_builtin_data_reports_val_and_test(base_dir, tmp_path):
    ev = cli.run(["--stage", "sft", "--init", str(base_dir), "--out", str(tmp_path / "sft"), "--preset", "tiny", *TINY])
    for name in ("val_loss", "fact_accuracy", "format_rate", "voice_rate"):
        test = common.test_name(name)
        for key in (name, f"{name}_before", test, f"{test}_before"):
            assert isinstance(ev[key], float), key
    assert ev["test_loss"] != ev["val_loss"]  # measured on other conversations
    assert not [k for k in ev if "general" in k]  # the toy model speaks no English
    assert json.loads((tmp_path / "sft" / "eval.json").read_text()) == ev


def test_rm_on_own_data_reports_test_only_with_a_test_file(base_dir, tmp_path):
    from minipost.data import builtin

    val = builtin("pref_val")
    args = ["--stage", "rm", "--init", str(base_dir), "--val-file", str(val), *TINY]
    ev = cli.run([*args, "--out", str(tmp_path / "a")])
    assert "pair_accuracy" in ev and not [k for k in ev if k.startswith("test_")]
    ev = cli.run([*args, "--out", str(tmp_path / "b"), "--test-file", str(val)])
    # the same file as val and test: the same numbers under both names
    assert ev["test_pair_accuracy"] == ev["pair_accuracy"] and ev["test_reward_mean"] == ev["reward_mean"]


def test_sft_on_a_real_format_model_reports_general_accuracy(tmp_path):
    base, _ = make_hf_dir(tmp_path / "hf")
    ev = cli.run(["--stage", "sft", "--init", str(base), "--out", str(tmp_path / "sft"), "--peft", "lora",
                  "--seq-len", "1024", *TINY])
    for key in ("general_accuracy", "general_accuracy_before", "test_general_accuracy",
                "test_general_accuracy_before", "test_loss", "test_loss_before"):
        assert 0 <= ev[key] <= (1 if "general" in key else 1e3), key
    from minipost.data import builtin, read_general

    first = read_general(builtin("general_val"))[:3]  # --max-eval 3
    assert set(ev["general_accuracy_by_kind"]) == {r["kind"] for r in first}


def test_cpt_on_a_real_format_model_reports_general_accuracy_before_and_after(tmp_path):
    # continual pretraining on raw shop text can cost a chat model its answers: cpt asks the
    # general questions before and after, like the post-training stages
    from minipost.data import builtin, read_general

    base, _ = make_hf_dir(tmp_path / "hf")
    model, tok, _ = common.load_stage_model(base)
    first = read_general(builtin("general_val"))[:3]  # --max-eval 3
    expected_before = evaluate.general_accuracy(model, tok, first)["general_accuracy"]
    ev = cli.run(["--stage", "cpt", "--init", str(base), "--out", str(tmp_path / "cpt"), "--peft", "lora",
                  "--seq-len", "64", "--eval-rows", "2", *TINY])
    assert ev["general_accuracy_before"] == expected_before
    for key in ("general_accuracy", "test_general_accuracy", "test_general_accuracy_before"):
        assert 0 <= ev[key] <= 1, key
    assert set(ev["general_accuracy_by_kind"]) == {r["kind"] for r in first}
    assert ev["domain_val_loss"] > 0 and ev["domain_val_loss_before"] > 0


def rl_args(**kw):
    return Namespace(**{"rl_task": "product", "reward_model": None, "train_file": None, "val_file": None,
                        "test_file": None, "max_eval": 5, **kw})


def test_rl_task_picks_the_built_in_files_and_user_files_win(tmp_path):
    from minipost import data
    from minipost.stages import rl_prompts

    for task, stem in (("product", "rl"), ("sum", "rl_sum")):
        train, val = rl_prompts.load_prompts(rl_args(rl_task=task))
        test = rl_prompts.load_test_prompts(rl_args(rl_task=task))
        assert train == data.read_rl(data.builtin(f"{stem}_train"))  # every train prompt
        assert val == data.read_rl(data.builtin(f"{stem}_val"))[:5] and len(val) == 5  # --max-eval of them
        assert test == data.read_rl(data.builtin(f"{stem}_test"))[:5]
    sums = data.read_rl(data.builtin("rl_sum_val"))
    assert all(r["prompt"][1]["content"].count(" x ") == 2 for r in sums)  # two items an order
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"prompt": [{"role": "user", "content": "2 + 2?"}], "answer": "4"}) + "\n")
    args = rl_args(rl_task="sum", train_file=mine, val_file=mine)
    assert rl_prompts.load_prompts(args) == ([{"prompt": [{"role": "user", "content": "2 + 2?"}], "answer": "4"}],) * 2
    assert rl_prompts.load_test_prompts(args) is None  # own validation data and no --test-file: no test split
    # under --reward-model the built-in prompts are the preference splits', whatever --rl-task says
    pref = rl_prompts.load_prompts(rl_args(rl_task="sum", reward_model=tmp_path))[1]
    assert pref == rl_prompts.preference_prompts(data.builtin("pref_val"))[:5]
    assert rl_prompts.builtin_names(rl_args(rl_task="sum", reward_model=tmp_path)) == ("pref_train", "pref_val", "pref_test")
