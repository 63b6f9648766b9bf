"""The DPO stage: the concatenated forward, the three ways to get the reference log-probs,
one step in the right direction, and end-to-end runs on the tiny preset."""
import copy
import json
import math
import shutil

import pytest
import torch

from minipost import checkpoint, cli
from minipost.chat import render_completion
from minipost.config import preset
from minipost.logprobs import sequence_logps
from minipost.model import GPT
from minipost.data import read_preferences, tokenize_pairs
from minipost.packing import pair_batch, pair_indices
from minipost.stages.dpo import concatenated_logps, dpo_objective, logps_table, pref_accuracy
from minipost.tokenizer import Tokenizer
from minipost.training import make_optimizer

SIGNOFF = "Happy shopping! - the Minimart team"


def pref_records(n, seed=0):
    import random

    rng = random.Random(seed)
    items = ["kettle", "mug", "lamp", "order"]
    out = []
    for i in range(n):
        item = rng.choice(items)
        out.append({"prompt": [{"role": "system", "content": "You are the support assistant of Minimart."},
                               {"role": "user", "content": f"where is my {item} #{i}?"}],
                    "chosen": f"Hi there! your {item} shipped March {i % 28 + 1}. {SIGNOFF}",
                    "rejected": f"the {item} shipped March {i % 28 + 2} thanks",
                    "meta": {"kind": "voice" if i % 2 else "hallucination"}})
    return out


def sft_records(n):
    return [{"messages": [{"role": "user", "content": f"when does my mug #{i} arrive?"},
                          {"role": "assistant", "content": f"Hi there! March {i + 1}. {SIGNOFF}"}],
             "meta": {"fact": f"March {i + 1}"}} for i in range(n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny(small_tokenizer):
    torch.manual_seed(0)
    return GPT(preset("tiny", vocab_size=small_tokenizer.vocab_size)), small_tokenizer


@pytest.fixture(scope="module")
def pairs(tiny):
    pairs, kept = tokenize_pairs(pref_records(6), tiny[1], max_len=256)
    assert kept == list(range(6))
    return pairs


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny, small_tokenizer):
    """A tiny "SFT checkpoint" built by hand, plus small data files."""
    d = tmp_path_factory.mktemp("dpo")
    checkpoint.save_model(tiny[0], d / "sft", stage="sft")
    shutil.copyfile(small_tokenizer.path, d / "sft" / "tokenizer.model")
    write_jsonl(d / "pref_train.jsonl", pref_records(12))
    write_jsonl(d / "pref_val.jsonl", pref_records(6, seed=1))
    write_jsonl(d / "sft_val.jsonl", sft_records(4))
    return d


def separate_forward(model, ids, targets):
    with torch.no_grad():
        return sequence_logps(model(torch.tensor([ids])), torch.tensor([targets])).item()


def logps_by_hand(model, ids, targets):
    """Sum over completion tokens of log softmax(logits)[target], one unpadded sequence, float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    return sum(torch.log_softmax(logits[t], -1)[y].item() for t, y in enumerate(targets) if y != -100)


def test_tokenize_pairs_scores_only_the_replies_and_drops_long_pairs(tiny):
    tok = tiny[1]
    records = pref_records(3)
    pairs, kept = tokenize_pairs(records, tok, max_len=256)
    for (c, r), rec in zip(pairs, records):
        assert c == render_completion(rec["prompt"], rec["chosen"], tok)
        assert r == render_completion(rec["prompt"], rec["rejected"], tok)
    limit = len(pairs[1][0][0])  # exactly the chosen inputs of pair 1: one token short of its full sequence
    _, kept = tokenize_pairs(records, tok, max_len=limit)
    assert 1 not in kept and all(max(len(pairs[i][0][0]), len(pairs[i][1][0])) + 1 <= limit for i in kept)


def test_concatenated_forward_equals_separate_forwards(tiny, pairs):
    model = tiny[0].eval()
    batch = pair_batch(pairs[:4], tiny[1].pad_id)
    assert batch["input_ids"].shape[0] == 8
    with torch.no_grad():
        chosen, rejected = concatenated_logps(model, batch)
    for b, (c, r) in enumerate(pairs[:4]):
        # two separate forwards, one unpadded sequence each, through the same float32 math
        # (a sum of ~40 float32 terms near -85: rounding is relative to that size)
        assert chosen[b].item() == pytest.approx(separate_forward(model, *c), rel=1e-6)
        assert rejected[b].item() == pytest.approx(separate_forward(model, *r), rel=1e-6)
        # and the formula itself, in float64 (so only float32 rounding of a ~40-term sum differs)
        assert chosen[b].item() == pytest.approx(logps_by_hand(model, *c), rel=1e-6)
        assert rejected[b].item() == pytest.approx(logps_by_hand(model, *r), rel=1e-6)
    # the IPO reduction: the mean over the completion tokens
    with torch.no_grad():
        chosen_mean, _ = concatenated_logps(model, batch, reduction="mean")
    n_tokens = torch.tensor([sum(t != -100 for t in c[1]) for c, _ in pairs[:4]], dtype=torch.float32)
    assert torch.allclose(chosen_mean, chosen / n_tokens, atol=1e-6)


def test_precomputed_reference_equals_on_the_fly(tiny, pairs):
    model = tiny[0].train()  # the loop runs in train mode; the table is built in eval mode
    table = logps_table(model, pairs, tiny[1].pad_id, batch_size=4)
    assert table.shape == (6, 2) and model.training
    for draw in range(3):
        index = pair_indices(len(pairs), 2, seed=7, draw=draw)
        with torch.no_grad():
            chosen, rejected = concatenated_logps(model, pair_batch([pairs[k] for k in index], tiny[1].pad_id))
        assert torch.allclose(table[index, 0], chosen, atol=1e-5)
        assert torch.allclose(table[index, 1], rejected, atol=1e-5)


def test_reference_under_lora_is_the_base_model(tiny, pairs):
    from minipost.peft import apply_peft, disable_adapters

    base = copy.deepcopy(tiny[0]).eval()
    expected = logps_table(base, pairs, tiny[1].pad_id)
    model = apply_peft(copy.deepcopy(base), "lora", r=4, alpha=8)
    with torch.no_grad():  # a trained-looking adapter, so that it changes the outputs
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
    with_adapters = logps_table(model, pairs, tiny[1].pad_id)
    assert (with_adapters - expected).abs().max() > 1e-2
    with disable_adapters(model):
        reference = logps_table(model, pairs, tiny[1].pad_id)
    assert torch.allclose(reference, expected, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo", "hinge"])
def test_one_step_raises_the_chosen_minus_rejected_margin(tiny, pairs, loss_type):
    torch.manual_seed(1)
    model = copy.deepcopy(tiny[0]).train()
    reduction = "mean" if loss_type == "ipo" else "sum"
    batch = pair_batch(pairs[:2], tiny[1].pad_id)
    ref = logps_table(model, pairs[:2], tiny[1].pad_id, reduction)
    margin_before = (ref[:, 0] - ref[:, 1]).sum().item()
    optimizer = make_optimizer(model, lr=1e-3)
    chosen, rejected = concatenated_logps(model, batch, reduction)
    eps = 0.1 if loss_type == "robust" else 0.0
    loss, stats = dpo_objective(chosen, rejected, ref[:, 0], ref[:, 1], 0.1, loss_type, eps)
    assert stats["rewards/margins"].item() == pytest.approx(0.0, abs=1e-5)  # policy == reference
    loss.backward()
    optimizer.step()
    after = logps_table(model, pairs[:2], tiny[1].pad_id, reduction)
    assert (after[:, 0] - after[:, 1]).sum().item() > margin_before + 1e-3


def test_dpo_objective_sums_losses_and_stats_over_pairs():
    pc, pr = torch.tensor([-3.0, -5.0], dtype=torch.float64), torch.tensor([-4.0, -2.0], dtype=torch.float64)
    rc, rr = torch.tensor([-3.5, -5.0], dtype=torch.float64), torch.tensor([-3.5, -2.5], dtype=torch.float64)
    loss, stats = dpo_objective(pc, pr, rc, rr, beta=0.5, loss_type="sigmoid", label_smoothing=0.0)
    deltas = [(-3.0 + 3.5) - (-4.0 + 3.5), (-5.0 + 5.0) - (-2.0 + 2.5)]  # 1.0, -0.5
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-0.5 * d)) for d in deltas), rel=1e-12)
    assert stats["rewards/chosen"].item() == pytest.approx(0.5 * (0.5 + 0.0))
    assert stats["rewards/rejected"].item() == pytest.approx(0.5 * (-0.5 + 0.5))
    assert stats["rewards/accuracies"].item() == 1
    assert stats["rewards/margins"].item() == pytest.approx(0.5 * sum(deltas))


def test_rpo_adds_alpha_times_the_chosen_nll_per_token():
    # RPO (Pang et al. 2024): loss = DPO + alpha * (-log pi(y_c)) / |y_c|, per pair, summed
    pc, pr = torch.tensor([-3.0, -5.0], dtype=torch.float64), torch.tensor([-4.0, -2.0], dtype=torch.float64)
    rc, rr = torch.tensor([-3.5, -5.0], dtype=torch.float64), torch.tensor([-3.5, -2.5], dtype=torch.float64)
    lengths = torch.tensor([3, 10])
    plain, _ = dpo_objective(pc, pr, rc, rr, 0.5, "sigmoid", 0.0)
    loss, stats = dpo_objective(pc, pr, rc, rr, 0.5, "sigmoid", 0.0, rpo_alpha=2.0, chosen_lengths=lengths)
    nll = 3.0 / 3 + 5.0 / 10
    assert loss.item() == pytest.approx(plain.item() + 2.0 * nll, rel=1e-12)
    assert stats["nll/chosen"].item() == pytest.approx(nll, rel=1e-12)
    pc.requires_grad_(True)  # d loss / d log pi(y_c) gains -alpha / |y_c|
    with_rpo = torch.autograd.grad(dpo_objective(pc, pr, rc, rr, 0.5, "sigmoid", 0.0, 2.0, lengths)[0], pc)[0]
    without = torch.autograd.grad(dpo_objective(pc, pr, rc, rr, 0.5, "sigmoid", 0.0)[0], pc)[0]
    assert torch.allclose(with_rpo - without, torch.tensor([-2.0 / 3, -2.0 / 10], dtype=torch.float64))


def test_rpo_term_of_a_step_is_the_chosen_tokens_mean_nll(tiny, pairs):
    # the stage counts the chosen reply's scored tokens from the batch; check against a loop
    model = copy.deepcopy(tiny[0]).eval()
    batch = pair_batch(pairs[:3], tiny[1].pad_id)
    chosen, rejected = concatenated_logps(model, batch, "sum")
    lengths = (batch["targets"][:3] != -100).sum(1)
    _, stats = dpo_objective(chosen, rejected, chosen.detach(), rejected.detach(), 0.1, "sigmoid", 0.0, 1.0, lengths)
    expected = 0.0
    for k in range(3):
        ids, tgt = batch["input_ids"][k].tolist(), batch["targets"][k].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).double()[0], -1)
        scored = [logp[t, y].item() for t, y in enumerate(tgt) if y != -100]
        expected += -sum(scored) / len(scored)
    assert stats["nll/chosen"].item() == pytest.approx(expected, rel=1e-4)


def test_pref_accuracy_on_hand_made_logps():
    policy = torch.tensor([[-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-5.0, -9.0]])
    reference = torch.tensor([[-1.5, -1.5], [-3.0, -2.0], [-2.0, -2.0], [-4.0, -9.0]])
    # log-ratio margins: 0.5 - (-0.5) = 1 (win); 0 - 1 = -1; 0 - 0 = 0 (tie, wrong); -1 - 0 = -1
    assert pref_accuracy(policy, reference) == 1 / 4  # an exact fraction, no float32 mean


def test_pair_indices_walk_epochs_of_permutations():
    draws = [pair_indices(5, 2, seed=3, draw=d) for d in range(5)]  # 10 items = 2 epochs of 5
    flat = [i for d in draws for i in d]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    assert flat[:5] != flat[5:] or flat[:5] == sorted(flat[:5])  # the epochs are shuffled independently
    assert draws == [pair_indices(5, 2, seed=3, draw=d) for d in range(5)]


def run_dpo(sft_dir, out, *extra):
    return cli.run(["--stage", "dpo", "--init", str(sft_dir / "sft"), "--out", str(out), "--preset", "tiny",
                    "--steps", "2", "--batch-size", "4", "--max-eval", "4", "--max-new-tokens", "24",
                    "--lr", "1e-3", "--warmup", "1", "--log-every", "1",
                    "--train-file", str(sft_dir / "pref_train.jsonl"), "--val-file", str(sft_dir / "pref_val.jsonl"),
                    "--eval-file", str(sft_dir / "sft_val.jsonl"), *extra])


def metrics_lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_full_fine_tuning(sft_dir):
    # --test-file: the validation pairs again, so the test numbers must equal the validation ones
    ev = run_dpo(sft_dir, sft_dir / "full", "--test-file", str(sft_dir / "pref_val.jsonl"))
    on_disk = json.loads((sft_dir / "full" / "eval.json").read_text())
    for key in ("pref_accuracy", "pref_accuracy_voice", "pref_accuracy_hallucination",
                "voice_rate", "fact_accuracy", "format_rate",
                "voice_rate_before", "fact_accuracy_before", "format_rate_before"):
        assert 0.0 <= on_disk[key] <= 1.0, key
        assert on_disk[key] == ev[key]
    for key in ("pref_accuracy", "pref_accuracy_voice", "pref_accuracy_hallucination"):
        assert ev[f"test_{key}"] == ev[key]
    assert not [k for k in ev if k.startswith("test_") and "rate" in k]  # --eval-file given: no sft_test replies
    assert ev["train_pairs"] == 12 and ev["dropped_pairs"] == 0
    assert (checkpoint.checkpoint_dir(sft_dir / "full") / "model.safetensors").is_file()
    refs = checkpoint.load_tensors(sft_dir / "full" / "ref_logps.safetensors")
    # --max-eval 4 of the 6 held-out pairs (the test file here is the validation file)
    assert refs["train"].shape == (12, 2) and refs["val"].shape == (4, 2) and torch.equal(refs["test"], refs["val"])
    # every train and held-out pair precomputed, by the model before training (the SFT model)
    sft_model, _ = checkpoint.load_model(sft_dir / "sft")
    tok = Tokenizer(sft_dir / "sft" / "tokenizer.model")
    train_pairs, _ = tokenize_pairs(read_preferences(sft_dir / "pref_train.jsonl"), tok, sft_model.cfg.max_seq_len)
    assert torch.allclose(refs["train"], logps_table(sft_model, train_pairs, tok.pad_id), atol=1e-5)
    assert torch.isfinite(refs["val"]).all()
    lines = metrics_lines(sft_dir / "full")
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
            assert math.isfinite(r[key]), key
        assert 0.0 <= r["rewards/accuracies"] <= 1.0
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-5)
    # step 1: the policy is the reference, so every implicit reward is 0 and the loss is log 2
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_resume_uses_the_saved_reference(sft_dir):
    if not (sft_dir / "full" / "eval.json").is_file():
        run_dpo(sft_dir, sft_dir / "full")
    with pytest.raises(SystemExit) as stop:
        run_dpo(sft_dir, sft_dir / "cut", "--interrupt-at", "1")
    assert stop.value.code == 130
    with pytest.raises(SystemExit, match="does not match the data"):  # another data file than the saved table's
        run_dpo(sft_dir, sft_dir / "cut", "--resume", "--train-file", str(sft_dir / "pref_val.jsonl"))
    run_dpo(sft_dir, sft_dir / "cut", "--resume")
    a, b = (checkpoint.load_tensors(checkpoint.checkpoint_dir(sft_dir / d) / "model.safetensors") for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metrics_lines(sft_dir / "cut")] == [r["loss"] for r in metrics_lines(sft_dir / "full")]


def test_smoke_run_lora_uses_disabled_adapters_as_reference(sft_dir):
    ev = run_dpo(sft_dir, sft_dir / "lora", "--peft", "lora", "--lora-r", "4")
    assert 0.0 <= ev["pref_accuracy"] <= 1.0 and 0.0 <= ev["voice_rate"] <= 1.0
    assert (checkpoint.checkpoint_dir(sft_dir / "lora") / "adapter.safetensors").is_file()
    assert not (sft_dir / "lora" / "ref_logps.safetensors").exists()  # on the fly, nothing precomputed
    assert metrics_lines(sft_dir / "lora")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_bad_flags_fail_before_any_work(sft_dir):
    with pytest.raises(SystemExit) as parse_error:  # --ref-model is gone: there are no other reference modes
        run_dpo(sft_dir, sft_dir / "bad", "--ref-model", "copy")
    assert parse_error.value.code == 2 and not (sft_dir / "bad").exists()
    with pytest.raises(SystemExit, match="label_smoothing"):
        run_dpo(sft_dir, sft_dir / "bad", "--loss-type", "hinge", "--label-smoothing", "0.1")


def test_rpo_alpha_run_logs_the_nll_and_adds_it_to_the_first_steps_log_2(sft_dir):
    # step 1: policy == reference, so the DPO part is log 2 and the rest is alpha * NLL per pair
    run_dpo(sft_dir, sft_dir / "rpo", "--rpo-alpha", "0.5")
    first = metrics_lines(sft_dir / "rpo")[0]
    assert first["nll/chosen"] > 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["nll/chosen"], abs=1e-5)
    run_dpo(sft_dir, sft_dir / "no_rpo", "--steps", "1")
    assert "nll/chosen" not in metrics_lines(sft_dir / "no_rpo")[0]  # plain DPO logs no NLL
