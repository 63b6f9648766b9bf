"""The reward-model stage: the pure pieces (sequences, batch, pair accuracy, the summed
Bradley-Terry objective) against explicit math, and an end-to-end run on the tiny preset."""
import json
import math
import random
import shutil

import pytest
import torch

from minipost import checkpoint, cli
from minipost.config import preset
from minipost.model import GPT
from minipost.stages.reward import (full_sequence, load_reward_model, pair_accuracy, reward_batch, rm_objective,
                                    score_batch, score_pairs)
from minipost.data import tokenize_pairs
from minipost.value_head import RewardModel

SIGNOFF = "Happy shopping! - the Minimart team"


def pref_records(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = rng.choice(["kettle", "mug", "lamp"])
        out.append({"prompt": f"where is my {item} #{i}?",
                    "chosen": f"Hi there! your {item} shipped March {i % 28 + 1}. {SIGNOFF}",
                    "rejected": f"the {item} shipped thanks",
                    "meta": {"kind": "voice" if i % 2 else "hallucination"}})
    return out


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, small_tokenizer):
    d = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    checkpoint.save_model(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), d / "sft", stage="sft")
    shutil.copyfile(small_tokenizer.path, d / "sft" / "tokenizer.model")
    for name, records in (("train", pref_records(12)), ("val", pref_records(6, seed=1))):
        (d / f"pref_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_reward_model_padded_batch_equals_each_sequence_alone():
    torch.manual_seed(4)
    rm = RewardModel(GPT(preset("tiny", vocab_size=50))).eval()
    seqs = [[1, 5, 9, 7, 2], [1, 8, 3], [1, 4, 4, 4, 4, 4, 6], [1, 2]]
    pairs = [(seqs[0], seqs[1]), (seqs[2], seqs[3])]
    batch = reward_batch(pairs, pad_id=3)
    assert batch["input_ids"].shape == (4, 7)
    assert batch["lengths"].tolist() == [5, 7, 3, 2]  # chosen rows first, then rejected
    chosen, rejected = score_batch(rm, batch)
    with torch.no_grad():
        chosen, rejected = chosen.tolist(), rejected.tolist()
        alone = [rm(torch.tensor([s]), torch.tensor([len(s)])).item() for s in seqs]
    assert chosen == pytest.approx([alone[0], alone[2]], abs=1e-5)
    assert rejected == pytest.approx([alone[1], alone[3]], abs=1e-5)


def test_full_sequence_rebuilds_the_token_list():
    ids, targets = [1, 10, 11, 12, 13], [-100, -100, 12, 13, 7]
    assert full_sequence((ids, targets)) == [1, 10, 11, 12, 13, 7]


def test_pair_accuracy_on_hand_made_scores():
    chosen = torch.tensor([1.0, 0.5, -2.0, 3.0, 0.0])
    rejected = torch.tensor([0.0, 0.5, -3.0, 4.0, -0.1])
    # wins: 1 > 0, -2 > -3, 0 > -0.1; the tie 0.5 = 0.5 and 3 < 4 are not
    assert pair_accuracy(chosen, rejected) == 3 / 5  # an exact fraction, no float32 mean
    assert pair_accuracy(torch.zeros(0), torch.zeros(0)) == 0.0


def test_rm_objective_is_the_summed_bradley_terry_loss():
    chosen = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    rejected = torch.tensor([0.1, 0.4, -0.5], dtype=torch.float64)
    margin = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    loss, stats = rm_objective(chosen, rejected, margin, center_coef=0.1)
    expected = sum(math.log1p(math.exp(-(c - r - m))) + 0.1 * (c + r) ** 2
                   for c, r, m in zip(chosen.tolist(), rejected.tolist(), margin.tolist()))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["rewards/accuracies"].item() == 2
    assert stats["rewards/margins"].item() == pytest.approx(0.2 - 1.6 + 2.5)


def test_smoke_run_and_reload(sft_dir, small_tokenizer):
    out = sft_dir / "rm"
    ev = cli.run(["--stage", "rm", "--init", str(sft_dir / "sft"), "--out", str(out), "--preset", "tiny",
                  "--steps", "2", "--batch-size", "4", "--max-eval", "4", "--log-every", "1", "--margin", "0.5",
                  "--train-file", str(sft_dir / "pref_train.jsonl"), "--val-file", str(sft_dir / "pref_val.jsonl")])
    on_disk = json.loads((out / "eval.json").read_text())
    for key in ("pair_accuracy", "pair_accuracy_voice", "pair_accuracy_hallucination"):
        assert 0.0 <= on_disk[key] <= 1.0 and on_disk[key] == ev[key], key
    assert math.isfinite(ev["reward_mean"]) and ev["reward_std"] >= 0 and ev["train_pairs"] == 12
    unit = checkpoint.checkpoint_dir(out)  # the head is saved in the same unit as the model
    assert (unit / "model.safetensors").is_file() and (unit / "value_head.safetensors").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert math.isfinite(r["loss"]) and 0.0 <= r["rewards/accuracies"] <= 1.0
    # The saved model + head score the held-out pairs exactly as eval.json says.
    rm, tok = load_reward_model(out)
    records = [json.loads(line) for line in (sft_dir / "pref_val.jsonl").read_text().splitlines()]
    from minipost.data import read_preferences

    # --max-eval 4: the first 4 of the 6 held-out pairs are scored
    pairs, _ = tokenize_pairs(read_preferences(sft_dir / "pref_val.jsonl")[:4], tok, 256)
    scores = score_pairs(rm, [(full_sequence(c), full_sequence(r)) for c, r in pairs], tok.pad_id)
    assert len(records) == 6 and len(pairs) == 4
    assert pair_accuracy(scores[:, 0], scores[:, 1]) == ev["pair_accuracy"]
    assert scores.mean().item() == pytest.approx(ev["reward_mean"], abs=1e-6)


def test_one_step_raises_the_reward_gap(small_tokenizer):
    from minipost.training import make_optimizer

    torch.manual_seed(5)
    rm = RewardModel(GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size))).train()
    records = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in pref_records(4)]
    pairs, _ = tokenize_pairs(records, small_tokenizer, 256)
    pairs = [(full_sequence(c), full_sequence(r)) for c, r in pairs]
    before = score_pairs(rm, pairs, small_tokenizer.pad_id)
    optimizer = make_optimizer(rm, lr=1e-3)
    chosen, rejected = score_batch(rm, reward_batch(pairs, small_tokenizer.pad_id))
    loss, _ = rm_objective(chosen, rejected, None, center_coef=0.0)
    loss.backward()
    optimizer.step()
    after = score_pairs(rm, pairs, small_tokenizer.pad_id)
    assert (after[:, 0] - after[:, 1]).sum().item() > (before[:, 0] - before[:, 1]).sum().item() + 1e-3
