"""Direct Preference Optimization (`--stage dpo`), starting from the SFT model (out/sft).

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model". The policy pi is trained on pairs (prompt x, chosen y_c, rejected y_r)
against a frozen reference pi_ref (the SFT model), through the implicit reward
r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)):

    loss = -log sigmoid( beta * [ (log pi(y_c|x) - log pi_ref(y_c|x))
                                - (log pi(y_r|x) - log pi_ref(y_r|x)) ] )

(and the variants of losses/dpo.py: --loss-type robust | ipo | hinge, --label-smoothing;
--rpo-alpha adds RPO's NLL term on the chosen replies).
log pi(y|x) is the sum of the completion's token log-probs (the prompt is not scored);
IPO takes their mean instead (see losses/dpo.py for why).

How it is computed here:
- One forward for both sides: the chosen rows and then the rejected rows of a batch are
  stacked into one right-padded batch [2B, W] (as TRL's `concatenated_forward`): one
  pass instead of two, and the two halves see identical weights and numerics.
- The reference costs no second model in memory:
    full fine-tuning  the model IS the reference before its first step, so the reference
                      log-probs of every train and held-out pair are computed by it in one
                      no-grad pass before training and stored in out/ref_logps.safetensors
                      (--resume reads them: the model in memory is no longer the reference);
    --peft            the reference is the same model inside peft.disable_adapters, computed
                      on the fly (docs/DESIGN.md §6); the held-out pairs' once, at the start.
  (bench/memory.py compares both with a frozen second copy of the model.)
- The stats of each step (tqdm bar and metrics.jsonl), averaged over the pairs: loss,
  rewards/chosen, rewards/rejected (the implicit rewards above), rewards/accuracies
  (fraction with r_c > r_r), rewards/margins (r_c - r_r).

eval.json: pref_accuracy (held-out pref_val pairs whose implicit reward ranks the chosen
reply above the rejected one; also per pair kind where the data says, pref_accuracy_voice,
pref_accuracy_hallucination), and the greedy-reply metrics of evaluate.py on held-out
sft_val prompts (voice_rate, fact_accuracy, format_rate), also for the SFT model before
training (*_before), so the effect of the stage shows in one file. The same on the test
split (pref_test or --test-file, and sft_test without --eval-file) as test_pref_accuracy,
test_fact_accuracy, ...; general_accuracy on a real model (common.held_out).

Deviation: pairs longer than --max-len (default: the model's context) are dropped, not
truncated, and counted in eval.json; cutting a reply would cut exactly the part (the end
of the reply, its sign-off) where chosen and rejected may differ.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from minipost import checkpoint
from minipost import data as datasets
from minipost import distributed, validate
from minipost.evaluate import reply_metrics
from minipost.logprobs import pair_sequence_logps
from minipost.losses import IGNORE_INDEX, dpo_loss
from minipost.losses.dpo import LOSS_TYPES, check_settings, rpo_nll
from minipost.data import tokenize_pairs
from minipost.packing import pair_batch, pair_indices
from minipost.stages import common
from minipost.training import ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr

REF_FILE = "ref_logps.safetensors"


def add_args(p, stage):
    # beta 0.1 as in the paper. Measured from the default SFT model (held-out pref_accuracy,
    # fact_accuracy change in points), beta 0.1 and lr 5e-5 unless said: 250 steps 0.890, +1.2;
    # 300 steps 0.885, +1.2; 350 steps 0.905, 0.0; 250 steps at lr 7e-5 0.890, +0.6. (From an
    # earlier SFT model: beta 0.25, 250 steps 0.890, -1.2; 350 steps 0.915, -2.5; lr 1e-4
    # 0.915, -3.7.) Preference accuracy and keeping the facts pull against each other; one
    # held-out pair moves pref_accuracy 0.5 points, one held-out question fact_accuracy 0.6.
    p.set_defaults(steps=350, batch_size=8, lr=5e-5, warmup=10)
    p.add_argument("--beta", type=float, default=0.1, help="KL strength of the implicit reward")
    p.add_argument("--loss-type", default="sigmoid", choices=LOSS_TYPES, help="the DPO variant (losses/dpo.py)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="assumed fraction of flipped labels")
    p.add_argument("--rpo-alpha", type=float, default=0.0,
                   help="weight of RPO's NLL term on the chosen replies (losses/dpo.py; 0: plain DPO)")
    p.add_argument("--max-len", type=int, default=None,
                   help="drop pairs longer than this (default: the model's context)")
    p.add_argument("--train-file", type=Path, default=None, help="preference JSONL (default: built-in pref_train)")
    p.add_argument("--val-file", type=Path, default=None, help="held-out preference JSONL (default: pref_val)")
    common.add_test_arg(p, "pref_test")
    p.add_argument("--eval-file", type=Path, default=None,
                   help="held-out SFT JSONL with meta.fact, for the reply metrics (default: sft_val)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length for the reply metrics")


# --- log-probs of pairs ---------------------------------------------------------------------

def concatenated_logps(model, batch: dict, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked rows of pair_batch -> (chosen logps [B], rejected logps [B]).

    Right padding needs no mask: under causal attention a real token never sees the pads
    after it, so each row scores exactly as it would alone. A pair's prompt runs once for
    both of its rows (logprobs.pair_sequence_logps: the same numbers).
    """
    logps = pair_sequence_logps(model, batch["input_ids"], batch["targets"], reduction)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


@torch.no_grad()
def logps_table(model, pairs: list[tuple], pad_id: int, reduction: str = "sum", batch_size: int = 16,
                device="cpu") -> torch.Tensor:
    """[N, 2] float32: log pi(chosen), log pi(rejected) of every pair, in eval mode, no grad."""
    was_training = model.training
    model.eval()
    rows = []
    for i in range(0, len(pairs), batch_size):
        batch = pair_batch(pairs[i: i + batch_size], pad_id)
        chosen, rejected = concatenated_logps(model, {k: v.to(device) for k, v in batch.items()}, reduction)
        rows.append(torch.stack([chosen, rejected], 1).float().cpu())
    model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, 2)


# --- loss and metric -----------------------------------------------------------------------

def dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing,
                  rpo_alpha: float = 0.0, chosen_lengths=None):
    """All [B] -> (loss summed over the pairs, stats summed over the pairs), the shape
    ItemWeighted.backward expects (it divides both by the number of pairs). rpo_alpha > 0
    adds RPO's NLL of the chosen replies (chosen_lengths: their completion tokens [B])."""
    losses, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                            beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    stats = {"rewards/chosen": chosen_r.sum(), "rewards/rejected": rejected_r.sum(),
             "rewards/accuracies": (chosen_r > rejected_r).float().sum(),
             "rewards/margins": (chosen_r - rejected_r).sum()}
    if rpo_alpha > 0:
        nll = rpo_nll(policy_chosen, chosen_lengths)
        losses = losses + rpo_alpha * nll
        stats["nll/chosen"] = nll.detach().sum()
    return losses.sum(), stats


def pref_accuracy(policy: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of pairs whose implicit reward log(pi/pi_ref) is higher for the chosen reply
    (beta > 0 scales both sides alike, so it drops out). policy, reference: [N, 2] logps of
    (chosen, rejected). A tie counts as wrong."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return int((margin > 0).sum()) / len(margin) if len(margin) else 0.0


def run(args):
    started = time.time()
    try:  # bad flags fail now, not after the reference pass
        check_settings(args.beta, args.loss_type, args.label_smoothing)
        if args.rpo_alpha < 0:
            raise ValueError(f"--rpo-alpha must be >= 0, got {args.rpo_alpha}")
    except ValueError as e:
        raise SystemExit(f"train.py: error: {e}") from None
    common.seed_everything(args.seed)
    model, tok = common.prepare_model(args)
    peft = args.peft != "none"
    reduction = "mean" if args.loss_type == "ipo" else "sum"
    max_len = args.max_len or model.cfg.max_seq_len

    # Data: preference pairs for training and held-out accuracy, SFT prompts for the replies.
    train_records = datasets.read_preferences(args.train_file or datasets.builtin("pref_train"))
    # At most --max-eval held-out pairs (all 200 of the built-in pref_val at the default).
    val_records = datasets.read_preferences(args.val_file or datasets.builtin("pref_val"))[: args.max_eval]
    validate.check_pairs_differ(train_records, args.train_file or "the built-in pref_train")  # zero-gradient pairs
    train_pairs, kept = tokenize_pairs(train_records, tok, max_len)
    val_pairs, val_kept = tokenize_pairs(val_records, tok, max_len)
    dropped, val_dropped = len(train_records) - len(kept), len(val_records) - len(val_kept)
    eval_records = datasets.read_sft(args.eval_file or datasets.builtin("sft_val"))[: args.max_eval]
    test_file = common.test_path(args.test_file, args.val_file, "pref_test")
    test_records = datasets.read_preferences(test_file)[: args.max_eval] if test_file else []
    test_pairs, test_kept = tokenize_pairs(test_records, tok, max_len)
    eval_test_file = common.test_path(None, args.eval_file, "sft_test")  # the reply metrics' test split
    eval_test = datasets.read_sft(eval_test_file)[: args.max_eval] if eval_test_file else []
    if not train_pairs or not val_pairs:
        raise SystemExit(f"[dpo] no preference pair fits in --max-len {max_len}")
    print(f"[dpo] {len(train_pairs)} train pairs, {len(val_pairs)} held-out pairs "
          f"({dropped} + {val_dropped} longer than {max_len} tokens dropped); reference: "
          f"{'adapters off' if peft else 'precomputed'}", file=sys.stderr)

    # The reference: the model with its adapters off (PEFT), or the model before training.
    def as_reference():
        from minipost.peft import disable_adapters

        return disable_adapters(model)  # a no-op on a model without adapters

    ref_path = Path(args.out) / REF_FILE
    ref_train = None
    if args.resume and not peft:
        tables = checkpoint.load_tensors(ref_path)
        ref_train, ref_val, ref_test = tables["train"], tables["val"], tables.get("test", torch.zeros(0, 2))
        stored = (len(ref_train), len(ref_val), len(ref_test))
        if stored != (len(train_pairs), len(val_pairs), len(test_pairs)):
            raise SystemExit(f"[dpo] {ref_path} does not match the data (different files or --max-len?)")
    else:
        t0 = time.time()
        with as_reference():
            ref_val = logps_table(model, val_pairs, tok.pad_id, reduction, device=args.device)
            ref_test = logps_table(model, test_pairs, tok.pad_id, reduction, device=args.device)
            if not peft:
                ref_train = logps_table(model, train_pairs, tok.pad_id, reduction, device=args.device)
                if distributed.is_main():  # under torchrun only rank 0 writes
                    tables = {"train": ref_train, "val": ref_val, **({"test": ref_test} if test_pairs else {})}
                    checkpoint.save_tensors(tables, ref_path)
        print(f"[dpo] reference log-probs computed in {time.time() - t0:.1f}s", file=sys.stderr)

    # Each held-out split: (pairs, their reference log-probs, their kinds, SFT records for the replies).
    val = (val_pairs, ref_val, [val_records[i].get("meta", {}).get("kind") for i in val_kept], eval_records)
    test = (test_pairs, ref_test, [test_records[i].get("meta", {}).get("kind") for i in test_kept], eval_test)
    test = test if test_pairs or eval_test else None

    def replies(records):
        return reply_metrics(model, tok, records, args.max_new_tokens) if records else {}

    before = {}
    if not args.resume:
        with as_reference():
            before = common.as_before(common.held_out(args, model, tok, lambda split: replies(split[3]), val, test))
        print(f"[dpo] before: {before}", file=sys.stderr)

    def reference_logps(batch):
        if ref_train is not None:
            ref = ref_train[batch["index"].cpu()].to(args.device)
            return ref[:, 0], ref[:, 1]
        with torch.no_grad(), as_reference():
            return concatenated_logps(model, batch, reduction)

    # Loss: one concatenated forward of the policy, the reference from above.
    def micro_batch(step, i):
        draw = distributed.shard_index(step * args.grad_accum + i)  # torchrun: rank r of W takes every W-th draw
        index = pair_indices(len(train_pairs), args.batch_size, args.seed, draw)
        batch = pair_batch([train_pairs[k] for k in index], tok.pad_id)
        return {**batch, "index": torch.tensor(index)}

    def loss_fn(batch):
        batch = {k: v.to(args.device) for k, v in batch.items()}
        policy_chosen, policy_rejected = concatenated_logps(model, batch, reduction)
        ref_chosen, ref_rejected = reference_logps(batch)
        lengths = None  # RPO's per-token NLL needs the chosen replies' token counts
        if args.rpo_alpha > 0:  # ipo's log-probs are already per token: its chosen "length" is 1
            lengths = (batch["targets"][: len(policy_chosen)] != IGNORE_INDEX).sum(1) if reduction == "sum" \
                else torch.ones_like(policy_chosen)
        return dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                             args.beta, args.loss_type, args.label_smoothing, args.rpo_alpha, lengths)

    def evaluate(pairs, ref, kinds, eval_records):
        if not pairs:  # a test split of SFT prompts only
            return replies(eval_records)
        policy = logps_table(model, pairs, tok.pad_id, reduction, device=args.device)
        out = {"pref_accuracy": pref_accuracy(policy, ref)}
        for kind in sorted({k for k in kinds if isinstance(k, str)}):  # e.g. voice, hallucination
            rows = torch.tensor([k == kind for k in kinds])
            out[f"pref_accuracy_{kind}"] = pref_accuracy(policy[rows], ref[rows])
        return {**out, **replies(eval_records)}

    # Loop and save.
    optimizer = make_optimizer(model, args.lr)
    start = common.resume_step(args, optimizer)
    save = lambda step: common.save_stage(model, tok, args, optimizer, step, beta=args.beta,  # noqa: E731
                                          loss_type=args.loss_type)
    net = distributed.wrap(model)  # DDP under torchrun: loss_fn runs inside its forward
    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            model.train()
            lr = set_lr(optimizer, step, args)
            micro = [micro_batch(step, i) for i in range(args.grad_accum)]
            acc = ItemWeighted([len(b["index"]) for b in micro])
            for j, b in enumerate(micro):  # gradients are synced over the ranks on the last one only
                acc.backward(*net(loss_fn, b, sync=j == len(micro) - 1))
            record = acc.result()
            record.update(lr=lr, grad_norm=clip_and_step(optimizer, record["loss"], step))
            progress.log(step, record, items=acc.total, evaluate=lambda: evaluate(*val))
    save(args.steps)

    # Evaluate on held-out data.
    metrics = common.held_out(args, model, tok, lambda split: evaluate(*split), val, test)
    return common.finish(args, {**metrics, **before, "train_pairs": len(train_pairs), "dropped_pairs": dropped},
                         started)
