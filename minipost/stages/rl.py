"""Reinforcement learning from verifiable rewards, reward functions or a reward model: GRPO
(`--stage grpo`) and RLOO (`--stage rloo`).

Both start from the SFT model and repeat, for --steps steps:

    1. rollout   pick --prompts-per-step RL prompts; sample --group-size completions of each
                 in one batched, KV-cached generate call (minipost/rollout.py), recording
                 log pi_old of every sampled token
    2. reward    r_i = task_reward + format_reward of completion i (minipost/rewards.py), or
                 the weighted --reward-fn functions, or with --reward-model RUN the reward
                 model's standardised score (RLHF; rollout.py and rm_reward.py say how)
    3. advantage computed inside each prompt's group, no learned critic
    4. update    --inner-epochs optimizer steps on this batch (the ratio pi/pi_old starts at 1)

GRPO (Shao et al. 2024, DeepSeekMath), losses/grpo.py:
    A_i  = (r_i - mean(r_group)) / (std(r_group) + eps)        --scale-rewards group|batch|none
    loss = -min(ratio_it A_i, clip(ratio_it, 1 - eps, 1 + eps_high) A_i) + beta KL3_it,
           ratio_it = pi(y_it) / pi_old(y_it), averaged per --loss-type:
           grpo (per sequence, then over sequences), bnpo (over all tokens), or dr_grpo
           (sum / (B * max_new_tokens); Liu et al. 2025, "Understanding R1-Zero-Like
           Training", use it with --scale-rewards none). --epsilon-high > --epsilon is
           DAPO's clip-higher (Yu et al. 2025).

RLOO (Ahmadian et al. 2024, "Back to Basics"), losses/rloo.py: the KL enters the reward,
    R_i  = r_i - beta * sum_t (log pi_old(y_it) - log pi_ref(y_it))
    A_i  = R_i - mean of the other k - 1 rewards of the group
    loss = -min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i),  ratio_i on whole sequences

The reference model pi_ref is the starting (SFT) model. --beta 0 keeps no reference at all;
under --peft it is the same model with its adapters switched off (peft.disable_adapters);
for full fine-tuning with beta > 0 a frozen copy is loaded from --init.

Logged each step (metrics.jsonl and the progress bar): reward mean/std, task accuracy on
the batch (prompts with answers), gold_mean (prompts with facts: rewards.gold_score, never
trained on), kl to the reference when one is kept (the summed log pi_old - log pi_ref per
completion, mean over the batch; GRPO also logs its loss's k3 estimate per token as
kl_k3), clip fraction of the last inner epoch (always 0 with --inner-epochs 1, where
ratio = 1), completion length, the share of groups whose G rewards are all equal (zero
advantage: no learning signal), and the time of each part of the step.
eval.json, greedy on the held-out prompts (at most --max-eval), before (`*_before`) and
after: task_accuracy on RL prompts with answers (stages/rl_prompts.py); otherwise the mean reward, and on the
built-in preference prompts gold_mean, fact_accuracy, voice_rate (common.held_out).
The same on the test split (the --rl-task's, pref_test with --reward-model, or --test-file) as
test_*, and general_accuracy on a real model.

Deviation from TRL's GRPOTrainer: one optimizer step per inner epoch over the whole rollout
batch (gradients accumulated over micro-batches of --batch-size rows, weighted so the sum
is the full-batch loss: training.ItemWeighted with sequences as the items, tokens for
bnpo), rather than TRL's split of a generation batch over several steps.
"""
from __future__ import annotations

import time

import torch

from minipost import distributed
from minipost.losses import grpo_loss, group_advantages, kl_penalized_rewards, masked_sum, rloo_advantages, rloo_loss
from minipost.losses.grpo import LOSS_TYPES, SCALES
from minipost.rollout import Rollout, batch_stats, completion_logps, rollout_kl
from minipost.stages import common
from minipost.training import ItemWeighted, Progress, clip_and_step, make_optimizer, set_lr


def add_args(p, stage):
    p.set_defaults(steps=150, batch_size=16, lr=1e-4, warmup=5)
    g = p.add_argument_group(f"{stage} (RL from verifiable rewards)")
    common.add_rl_args(g, group_size=8)
    g.add_argument("--beta", type=float, default=0.04 if stage == "grpo" else 0.05,
                   help="KL weight to the reference (0: no reference model is kept)")
    g.add_argument("--epsilon", type=float, default=0.2, help="clip width of the ratio")
    g.add_argument("--inner-epochs", type=int, default=1, help="optimizer steps per rollout batch")
    if stage == "grpo":
        g.add_argument("--epsilon-high", type=float, default=None, help="upper clip width (default: --epsilon)")
        g.add_argument("--loss-type", default="grpo", choices=LOSS_TYPES, help="how the token losses are averaged")
        g.add_argument("--scale-rewards", default="group", choices=SCALES, help="what the advantages are divided by")


def n_items(args, mb: Rollout) -> int:
    """What a micro-batch's loss is a mean over: its completion tokens for bnpo, its
    sequences for grpo, dr_grpo (B * max_new_tokens: proportional to B) and RLOO."""
    return int(mb.mask.sum().item()) if getattr(args, "loss_type", None) == "bnpo" else len(mb.texts)


def micro_loss(args, logps, mb: Rollout, adv, ref_logps) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch as a SUM over its n_items (ItemWeighted) -> (loss_sum,
    stats). logps [b, C] the policy's log-probs of mb's completions (with grad), adv [b],
    ref_logps [b, C] or None. stats: the micro-batch's own clip_ratio (and GRPO's kl) means."""
    if args.stage == "grpo":
        loss, st = grpo_loss(logps, mb.old_logps, adv, mb.mask, ref_logps=ref_logps, beta=args.beta,
                             epsilon=args.epsilon, epsilon_high=args.epsilon_high, loss_type=args.loss_type,
                             max_completion_length=args.max_new_tokens)
    else:
        seq, old_seq = masked_sum(logps, mb.mask, dim=1), masked_sum(mb.old_logps, mb.mask, dim=1)
        loss, st = rloo_loss(seq, old_seq, adv, epsilon=args.epsilon)
    return loss * n_items(args, mb), {k: v.item() for k, v in st.items()}


def run(args):
    started = time.time()
    if args.init is None:
        raise SystemExit(f"train.py: error: --stage {args.stage} needs --init (an SFT checkpoint)")
    if args.group_size < 2:
        raise SystemExit("train.py: error: --group-size must be at least 2 (the group is the baseline)")
    common.seed_everything(args.seed)
    model, tok = common.prepare_model(args)
    train, val, ref_scorer, reward, held_out = common.rl_setup(args, model, tok, args.beta)
    before = common.held_out_before(held_out, args)
    optimizer = make_optimizer(model, args.lr)
    net = distributed.wrap(model)  # DDP under torchrun
    start = common.resume_step(args, optimizer)
    save = lambda step: common.save_stage(model, tok, args, optimizer, step, **before)  # noqa: E731

    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            t0 = time.time()
            lr = set_lr(optimizer, step, args)
            # 1. rollout: G completions of each of the step's prompts, scored
            ro = common.step_rollout(model, tok, train, step, args, reward)
            t1 = time.time()
            ref_logps = ref_scorer(ro) if ref_scorer is not None else None
            record = {"lr": lr, **batch_stats(ro)}
            if ref_logps is not None:
                record["kl"] = rollout_kl(ro, ref_logps)
            # 2.-3. rewards and advantages within each prompt's group
            if args.stage == "grpo":
                adv = group_advantages(ro.rewards, args.group_size, scale=args.scale_rewards)
            else:
                rewards = ro.rewards
                if ref_logps is not None:
                    rewards = kl_penalized_rewards(ro.rewards, ro.old_logps, ref_logps, ro.mask, args.beta)
                adv = rloo_advantages(rewards, args.group_size)
            # 4. update: one optimizer step per inner epoch over the whole rollout batch
            model.train()
            rows = [slice(i, i + args.batch_size) for i in range(0, len(ro.texts), args.batch_size)]
            tokens = ro.mask.sum().item()
            for epoch in range(args.inner_epochs):
                acc = ItemWeighted([n_items(args, ro.rows(r)) for r in rows])
                stats = {}
                for j, r in enumerate(rows):  # gradients are synced over the ranks on the last one only
                    mb = ro.rows(r)
                    logps = net(completion_logps, model, mb, sync=j == len(rows) - 1)
                    loss_sum, st = micro_loss(args, logps, mb, adv[r], None if ref_logps is None else ref_logps[r])
                    acc.backward(loss_sum)
                    # stats: GRPO's are token means (weighted by tokens), RLOO's sequence means
                    w = mb.mask.sum().item() / max(tokens, 1) if args.stage == "grpo" else len(mb.texts) / len(ro.texts)
                    for k, v in st.items():
                        stats[k] = stats.get(k, 0.0) + v * w
                loss = acc.result()["loss"]
                record["grad_norm"] = clip_and_step(optimizer, loss, step)
                # Report the first epoch's k3 (the rollout policy's) and the last epoch's clipping.
                record.update(loss=loss, clip_frac=stats["clip_ratio"])
                if epoch == 0 and args.stage == "grpo" and ref_logps is not None:
                    record["kl_k3"] = stats["kl"]
            record.update(rollout_s=t1 - t0, update_s=time.time() - t1)
            progress.log(step, distributed.mean_across_ranks(record),  # torchrun: the mean over the ranks
                         evaluate=lambda: common.held_out_record(held_out()))
    save(args.steps)
    return common.finish(args, {**before, **held_out(), "eval_prompts": len(val)}, started)
