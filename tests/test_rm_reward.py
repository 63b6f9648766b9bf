"""minipost/rm_reward.py: a --stage rm run as an RL reward. Scores equal the RM's own forward
on the RM stage's sequences; the normaliser is the held-out formula; the text-function scorer
(the stub RM for deterministic RL checks) follows the same interface."""
import json
import math
import shutil

import pytest
import torch

from minipost import cli, checkpoint
from minipost.config import preset
from minipost.model import GPT
from minipost.rm_reward import RewardModelScorer, TextFunctionScorer, held_out_stats
from minipost.stages.reward import full_sequence, load_reward_model, reward_batch, score_pairs
from minipost.data import tokenize_pairs
from minipost.data import read_preferences

SIGNOFF = "Happy shopping! - the Minimart team"


def pref_lines(n, offset=0):
    return "".join(json.dumps({"prompt": [{"role": "system", "content": "Be kind."},
                                          {"role": "user", "content": f"where is my mug #{i}?"}],
                               "chosen": f"Hi there! your mug shipped March {i % 28 + 1}. {SIGNOFF}",
                               "rejected": f"the lamp shipped {i} thanks"}) + "\n"
                   for i in range(offset, offset + n))


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, small_tokenizer):
    """A reward model trained for one step by the rm stage itself (tiny preset)."""
    d = tmp_path_factory.mktemp("rmr")
    torch.manual_seed(0)
    checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), d / "sft", stage="sft")
    shutil.copyfile(small_tokenizer.path, d / "sft" / "tokenizer.model")
    (d / "train.jsonl").write_text(pref_lines(8))
    (d / "val.jsonl").write_text(pref_lines(5, offset=100))
    cli.run(["--stage", "rm", "--init", str(d / "sft"), "--out", str(d / "rm"), "--preset", "tiny", "--steps", "1",
             "--batch-size", "4", "--train-file", str(d / "train.jsonl"), "--val-file", str(d / "val.jsonl")])
    return d


def stage_scores(run, records):
    """The RM stage's own path: tokenize_pairs -> full_sequence -> reward_batch -> rm forward."""
    rm, tok = load_reward_model(run / "rm")
    pairs, _ = tokenize_pairs(records, tok, 256)
    pairs = [(full_sequence(c), full_sequence(r)) for c, r in pairs]
    with torch.no_grad():
        batch = reward_batch(pairs, tok.pad_id)
        return rm.eval()(batch["input_ids"], batch["lengths"]), rm, tok, pairs


def test_scores_equal_the_reward_models_forward(rm_run):
    records = read_preferences(rm_run / "val.jsonl")
    expected, _, _, _ = stage_scores(rm_run, records)                 # [2N]: chosen rows, then rejected
    scorer = RewardModelScorer(rm_run / "rm", batch_size=2 * len(records), normalize=False)
    prompts = [r["prompt"] for r in records] * 2
    completions = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    got = scorer.raw_scores(prompts, completions)
    assert torch.equal(got, expected)                                 # the same padded batch, bit for bit
    # In other batch sizes the padding differs, the scores do not (beyond float noise).
    small = RewardModelScorer(rm_run / "rm", batch_size=3, normalize=False).raw_scores(prompts, completions)
    assert torch.allclose(small, expected, atol=1e-6, rtol=0)
    # A string prompt is one user message, as in the record format.
    assert torch.equal(scorer.raw_scores(["hi"], ["ok"]), scorer.raw_scores([[{"role": "user", "content": "hi"}]],
                                                                            ["ok"]))


def test_normalisation_is_the_held_out_standardisation(rm_run, tmp_path):
    info = json.loads((rm_run / "rm" / "eval.json").read_text())
    scorer = RewardModelScorer(rm_run / "rm")
    assert (scorer.mean, scorer.std) == (info["reward_mean"], info["reward_std"])
    prompts, completions = ["where is my mug?", "a refund?"], ["Hi there! soon. " + SIGNOFF, "no"]
    raw = RewardModelScorer(rm_run / "rm", normalize=False).raw_scores(prompts, completions)
    assert torch.equal(scorer.score(prompts, completions), (raw - info["reward_mean"]) / info["reward_std"])
    assert scorer(completions, prompt=prompts) == ((raw - info["reward_mean"]) / info["reward_std"]).tolist()

    # A run without the stats in eval.json: computed at load on the held-out file, same numbers.
    bare = tmp_path / "rm"
    shutil.copytree(rm_run / "rm", bare)
    (bare / "eval.json").unlink()
    computed = RewardModelScorer(bare, val_file=rm_run / "val.jsonl")
    assert computed.mean == pytest.approx(info["reward_mean"], abs=1e-6)
    assert computed.std == pytest.approx(info["reward_std"], abs=1e-6)
    # ... which is the mean and unbiased std over all 2N held-out replies, written out.
    _, rm, tok, pairs = stage_scores(rm_run, read_preferences(rm_run / "val.jsonl"))
    xs = score_pairs(rm, pairs, tok.pad_id).double().flatten().tolist()
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))
    assert computed.mean == pytest.approx(mu, abs=1e-6) and computed.std == pytest.approx(sd, abs=1e-6)


def test_held_out_stats_formula():
    scores = torch.tensor([[1.0, -1.0], [3.0, 1.0]])                  # mean 1; deviations 0, -2, 2, 0
    mean, std = held_out_stats(scores)
    assert mean == 1.0 and std == pytest.approx(math.sqrt(8 / 3), rel=1e-7)


def test_too_long_a_completion_is_refused(rm_run):
    scorer = RewardModelScorer(rm_run / "rm")
    with pytest.raises(ValueError, match="completion 0: prompt \\+ reply is .* tokens, more than"):
        scorer.score(["hi"], ["mug " * 400])
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        scorer.score(["a", "b"], ["x"])


# ----------------------------------------------------------------------------- stub RM

def signoff_reward(prompt, completion):
    """A known function of the text: 1 per sign-off, minus 0.01 per character."""
    return completion.count(SIGNOFF) - 0.01 * len(completion)


def test_stub_scorer_has_the_same_interface_and_formula():
    stub = TextFunctionScorer(signoff_reward, mean=0.5, std=0.25)
    completions = [f"Hi there! ok. {SIGNOFF}", "no", SIGNOFF * 2]
    raw = [signoff_reward(None, c) for c in completions]
    expected = torch.tensor([(r - 0.5) / 0.25 for r in raw], dtype=torch.float32)
    assert torch.allclose(stub.score(["p"] * 3, completions), expected, atol=1e-6, rtol=0)
    assert stub(completions, prompt=["p"] * 3) == stub.score(["p"] * 3, completions).tolist()
    assert torch.equal(TextFunctionScorer(signoff_reward, normalize=False).raw_scores(["p"] * 3, completions),
                       torch.tensor(raw, dtype=torch.float32))
    with pytest.raises(ValueError, match="std > 0"):
        TextFunctionScorer(signoff_reward, std=0.0)
