"""Direct Preference Optimization (`--stage dpo`), starting from the SFT model (out/sft).

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model". The policy pi is trained on pairs (prompt x, chosen y_c, rejected y_r)
against a frozen reference pi_ref (the SFT model), through the implicit reward
r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)):

    loss = -log sigmoid( beta * [ (log pi(y_c|x) - log pi_ref(y_c|x))
                                - (log pi(y_r|x) - log pi_ref(y_r|x)) ] )

(and the variants of losses/dpo.py: --loss-type robust | ipo | hinge, --label-smoothing).
log pi(y|x) is the sum of the completion's token log-probs (the prompt is not scored);
IPO takes their mean instead (see losses/dpo.py for why).

How it is computed here:
- One forward for both sides: the chosen rows and then the rejected rows of a batch are
  stacked into one right-padded batch [2B, W] (as TRL's `concatenated_forward`): one
  pass instead of two, and the two halves see identical weights and numerics.
- The reference costs no second model in memory (--ref-model):
    precompute  (the default for full fine-tuning) the reference log-probs of the held-out
                pairs and of every train pair the run will draw (the draws are a function
                of --seed, --steps, --batch-size; pairs never drawn are skipped) are
                computed in one no-grad pass before training, by the model itself (it IS
                the reference then), and stored in out/ref_logps.safetensors (so
                --resume finds them);
    adapters    (the default under --peft) the reference is the same model inside
                peft.disable_adapters, computed on the fly (docs/DESIGN.md §6);
    copy        a frozen second model loaded from --init: twice the weights in memory,
                for comparison (bench/memory.py).
- The stats of each step (tqdm bar and metrics.jsonl), averaged over the pairs: loss,
  rewards/chosen, rewards/rejected (the implicit rewards above), rewards/accuracies
  (fraction with r_c > r_r), rewards/margins (r_c - r_r).

eval.json: pref_accuracy (held-out pref_val pairs whose implicit reward ranks the chosen
reply above the rejected one; also per pair kind where the data says, pref_accuracy_voice,
pref_accuracy_hallucination), and the greedy-reply metrics of evaluate.py on held-out
sft_val prompts (voice_rate, fact_accuracy, format_rate), also for the SFT model before
training (*_before), so the effect of the stage shows in one file.

Deviation: pairs longer than --max-len (default: the model's context) are dropped, not
truncated, and counted in eval.json; cutting a reply would cut exactly the part (the end
of the reply, its sign-off) where chosen and rejected may differ.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path

import torch

from minipost import checkpoint
from minipost import data as datasets
from minipost import distributed
from minipost.chat import render_completion
from minipost.evaluate import reply_metrics
from minipost.logprobs import model_sequence_logps
from minipost.losses import dpo_loss
from minipost.losses.dpo import LOSS_TYPES
from minipost.packing import pad_batch
from minipost.stages import common
from minipost.training import make_optimizer, run_loop

REF_MODES = ("precompute", "adapters", "copy")
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
    p.add_argument("--loss-type", default="sigmoid", choices=LOSS_TYPES)
    p.add_argument("--label-smoothing", type=float, default=0.0, help="assumed fraction of flipped labels")
    p.add_argument("--ref-model", default=None, choices=REF_MODES,
                   help="how the reference is computed (default: adapters under --peft, else precompute)")
    p.add_argument("--max-len", type=int, default=None,
                   help="drop pairs longer than this (default: the model's context)")
    p.add_argument("--train-file", type=Path, default=None, help="preference JSONL (default: built-in pref_train)")
    p.add_argument("--val-file", type=Path, default=None, help="held-out preference JSONL (default: pref_val)")
    p.add_argument("--eval-file", type=Path, default=None,
                   help="held-out SFT JSONL with meta.fact, for the reply metrics (default: sft_val)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length for the reply metrics")


# --- data: pairs of rendered completions ---------------------------------------------------

def tokenize_pairs(records: list[dict], tok, max_len: int) -> tuple[list[tuple], list[int]]:
    """Render each record's prompt + chosen and prompt + rejected (render_completion: loss on
    the reply and its <|end|> only) -> (pairs [((ids, targets), (ids, targets))], kept), keeping
    the pairs whose full sequences (ids plus the final <|end|>) fit in max_len tokens; kept
    lists the indices of the records they came from."""
    pairs, kept = [], []
    for i, r in enumerate(records):
        chosen = render_completion(r["prompt"], r["chosen"], tok)
        rejected = render_completion(r["prompt"], r["rejected"], tok)
        if max(len(chosen[0]), len(rejected[0])) + 1 <= max_len:
            pairs.append((chosen, rejected))
            kept.append(i)
    return pairs, kept


def pair_batch(pairs: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> one right-padded batch of 2B rows: rows 0..B-1 chosen, B..2B-1 rejected.
    input_ids, targets [2B, W] (W = the longest of all 2B), as packing.pad_batch."""
    return pad_batch([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def concatenated_logps(model, batch: dict, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over the stacked rows of pair_batch -> (chosen logps [B], rejected logps [B]).

    Right padding needs no mask: under causal attention a real token never sees the pads
    after it, so each row scores exactly as it would alone.
    """
    logps = model_sequence_logps(model, batch["input_ids"], batch["targets"], reduction)
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


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return tuple(torch.randperm(n, generator=g).tolist())


def pair_indices(n: int, batch_size: int, seed: int, draw: int) -> list[int]:
    """The pairs of the draw-th micro-batch: the data is walked epoch after epoch, each epoch
    in its own shuffled order seeded by (seed, epoch), so every pair is seen once per epoch
    and a resumed run draws exactly what an uninterrupted one would."""
    out = []
    for k in range(draw * batch_size, (draw + 1) * batch_size):
        epoch, pos = divmod(k, n)
        out.append(_epoch_order(n, seed, epoch)[pos])
    return out


def pairs_drawn(n: int, batch_size: int, seed: int, draws: int) -> list[int]:
    """The sorted indices of every pair that micro-batches 0..draws-1 use."""
    return sorted({k for d in range(draws) for k in pair_indices(n, batch_size, seed, d)})


# --- loss and metric -----------------------------------------------------------------------

def dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing):
    """All [B] -> (loss summed over the pairs, stats summed over the pairs), the shape
    run_loop expects (it divides both by the number of pairs)."""
    losses, chosen_r, rejected_r = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                            beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    stats = {"rewards/chosen": chosen_r.sum(), "rewards/rejected": rejected_r.sum(),
             "rewards/accuracies": (chosen_r > rejected_r).float().sum(),
             "rewards/margins": (chosen_r - rejected_r).sum()}
    return losses.sum(), stats


def pref_accuracy(policy: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of pairs whose implicit reward log(pi/pi_ref) is higher for the chosen reply
    (beta > 0 scales both sides alike, so it drops out). policy, reference: [N, 2] logps of
    (chosen, rejected). A tie counts as wrong."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return int((margin > 0).sum()) / len(margin) if len(margin) else 0.0


def run(args):
    started = time.time()
    common.seed_everything(args.seed)
    dpo_loss(*torch.zeros(4, 1), beta=args.beta, loss_type=args.loss_type,
             label_smoothing=args.label_smoothing)  # fail on bad flags now, not after the precompute
    model, tok = common.prepare_model(args)
    peft = args.peft != "none"
    mode = args.ref_model or ("adapters" if peft else "precompute")
    if mode == "adapters" and not peft:
        raise SystemExit("train.py: error: --ref-model adapters needs --peft "
                         "(without adapters there is nothing to switch off)")
    reduction = "mean" if args.loss_type == "ipo" else "sum"
    max_len = args.max_len or model.cfg.max_seq_len

    # Data: preference pairs for training and held-out accuracy, SFT prompts for the replies.
    train_records = datasets.read_preferences(args.train_file or datasets.builtin("pref_train"))
    val_records = datasets.read_preferences(args.val_file or datasets.builtin("pref_val"))
    train_pairs, kept = tokenize_pairs(train_records, tok, max_len)
    val_pairs, val_kept = tokenize_pairs(val_records, tok, max_len)
    dropped, val_dropped = len(train_records) - len(kept), len(val_records) - len(val_kept)
    eval_records = datasets.read_sft(args.eval_file or datasets.builtin("sft_val"))[: args.max_eval]
    if not train_pairs or not val_pairs:
        raise SystemExit(f"[dpo] no preference pair fits in --max-len {max_len}")
    print(f"[dpo] {len(train_pairs)} train pairs, {len(val_pairs)} held-out pairs "
          f"({dropped} + {val_dropped} longer than {max_len} tokens dropped); reference: {mode}", file=sys.stderr)

    # The reference: a network and the context in which it acts as pi_ref.
    if mode == "copy":
        ref_net, _, _ = common.load_stage_model(args.init, args.device)
        ref_net.requires_grad_(False).eval()
    else:
        ref_net = model
    from_adapters_off = peft and mode != "copy"

    def as_reference():
        if from_adapters_off:
            from minipost.peft import disable_adapters

            return disable_adapters(model)
        return contextlib.nullcontext()

    ref_path = Path(args.out) / REF_FILE
    n_draws = args.steps * args.grad_accum * distributed.world_size()
    drawn = pairs_drawn(len(train_pairs), args.batch_size, args.seed, n_draws) if mode == "precompute" else []
    if args.resume and mode == "precompute":
        tables = checkpoint.load_tensors(ref_path)  # the model in memory is no longer the reference
        ref_train, ref_val = tables["train"], tables["val"]
        if len(ref_train) != len(train_pairs) or len(ref_val) != len(val_pairs):
            raise SystemExit(f"[dpo] {ref_path} does not match the data (different files or --max-len?)")
        if ref_train[drawn].isnan().any():
            raise SystemExit(f"[dpo] {ref_path} lacks pairs this run draws: resume with the original "
                             "--steps, --batch-size, --grad-accum, --seed and number of processes")
    else:
        with as_reference():
            t0 = time.time()
            ref_val = logps_table(ref_net, val_pairs, tok.pad_id, reduction, device=args.device)
            ref_train = None
            if mode == "precompute":  # only the pairs this run will draw, on any rank (NaN for the others)
                ref_train = torch.full((len(train_pairs), 2), float("nan"))
                ref_train[drawn] = logps_table(ref_net, [train_pairs[k] for k in drawn], tok.pad_id, reduction,
                                               device=args.device)
                if distributed.is_main():  # under torchrun only rank 0 writes
                    checkpoint.save_tensors({"train": ref_train, "val": ref_val}, ref_path)
            print(f"[dpo] reference log-probs computed in {time.time() - t0:.1f}s", file=sys.stderr)

    before = {}
    if not args.resume:
        with as_reference():
            m = reply_metrics(ref_net, tok, eval_records, args.max_new_tokens)
        before = {f"{k}_before": v for k, v in m.items()}
        print(f"[dpo] before: {before}", file=sys.stderr)

    def reference_logps(batch):
        if mode == "precompute":
            ref = ref_train[batch["index"].cpu()].to(args.device)
            return ref[:, 0], ref[:, 1]
        with torch.no_grad(), as_reference():
            return concatenated_logps(ref_net, batch, reduction)

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
        return dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                             args.beta, args.loss_type, args.label_smoothing)

    def evaluate():
        policy_val = logps_table(model, val_pairs, tok.pad_id, reduction, device=args.device)
        out = {"pref_accuracy": pref_accuracy(policy_val, ref_val)}
        kinds = [val_records[i].get("meta", {}).get("kind") for i in val_kept]
        for kind in sorted({k for k in kinds if isinstance(k, str)}):  # e.g. voice, hallucination
            rows = torch.tensor([k == kind for k in kinds])
            out[f"pref_accuracy_{kind}"] = pref_accuracy(policy_val[rows], ref_val[rows])
        return {**out, **reply_metrics(model, tok, eval_records, args.max_new_tokens)}

    # Loop and save.
    optimizer = make_optimizer(model, args.lr)
    start = common.resume_step(args, optimizer)
    save = lambda step: common.save_stage(model, tok, args, optimizer, step, beta=args.beta,  # noqa: E731
                                          loss_type=args.loss_type, ref_model=mode)
    run_loop(model=model, optimizer=optimizer, cfg=common.loop_config(args),
             micro_batch=micro_batch, count_items=lambda b: len(b["index"]), loss_fn=loss_fn, save=save,
             log=common.metrics_log(args), start_step=start, evaluate=evaluate, desc="dpo")
    save(args.steps)

    # Evaluate on held-out data.
    metrics = evaluate()
    return common.finish(args, {**metrics, **before, "train_pairs": len(train_pairs), "dropped_pairs": dropped},
                         started)
