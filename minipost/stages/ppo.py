"""Proximal Policy Optimization with a learned critic (`--stage ppo`), from the SFT model.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; advantages by GAE,
Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation"; the per-token KL penalty in the reward as in Ouyang et al. 2022 (InstructGPT,
after Ziegler et al. 2019 and Stiennon et al. 2020). Each completion token is one action.
Per step:

    1. rollout   --group-size completions of each of --prompts-per-step prompts, one batched
                 KV-cached generate call (minipost/rollout.py), log pi_old recorded
    2. score     s_i = task_reward + format_reward of completion i (minipost/rewards.py), the
                 weighted --reward-fn functions, or the --reward-model's standardised score
    3. rewards   per completion token t of completion i               (shaped_rewards)
                     r_it = -kl_coef * (log pi_old(y_it) - log pi_ref(y_it))
                     r_it += s_i                  at the LAST completion token only
    4. critic    V_it = w . h_it + b: h_it is the policy's final hidden state at the position
                 that chose y_it (the state before action t)
    5. GAE       delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token)
                 A_t = delta_t + gamma lam A_{t+1};  returns R_t = A_t + V_t
                 A whitened over all completion tokens of the batch
    6. update    --ppo-epochs passes over random minibatches of --batch-size completions,
                 one optimizer step each:
                     loss = L_clip(ratio_t, A_t) + vf_coef * L_V(V, V_old, R)
                 with the clipped policy and value losses of losses/ppo.py (clip widths
                 --cliprange and --cliprange-value).

Where the score goes. We add it to the reward of the last completion token: the stop token
(<|end|>) the policy chose, or its last token if it ran out of --max-new-tokens. Rewards,
values and both losses then share one mask, the tokens the policy actually emitted. TRL's
PPOTrainer instead adds the score one position later, at index sequence_length + 1 (the
first padding position, which its value mask keeps) when the response is shorter than the
generation length, so its critic also predicts a value for the state after the last token
and GAE bootstraps from it. With gamma = 1 the discounted
score seen from every emitted token is the same; only that extra critic position differs.

The critic, our choice: a value head (value_head.ValueHead, one linear map d_model -> 1) on
the policy's own hidden states (a shared trunk, the usual actor-critic layout), so one
forward pass gives both log-probs and values. The value loss reaches the shared trunk
scaled by --vf-coef. The head starts at zero weights, so its first, uninformed, gradients
do not move the trunk, and learns at its own rate --value-lr (a fresh head at the policy's
small learning rate would barely move). It is saved with the policy, as
value_head.safetensors in the same checkpoint unit (for --resume).
With --reward-model the critic still starts from the policy, not from the reward model
(TRL's PPOTrainer and InstructGPT start a separate value model from the RM): the RM's head
reads the RM's own trunk, so a critic from the RM is a fourth full model with its own
forward and backward per minibatch, about doubling the update on a CPU, while what the RM
knows is already in the reward the critic learns to predict (its score of the final
token). The RLHF run then holds three trunks: policy (+ value head, trained), reference
(frozen) and reward model (frozen, used once per rollout).

The reference is the --init model: a frozen copy for full fine-tuning, the same model
inside peft.disable_adapters under --peft, and none at all with --kl-coef 0.
Logged: reward mean/std, batch task accuracy (prompts with answers), gold_mean (prompts with
facts, never trained on), kl (mean over completions of the summed log pi_old - log pi_ref;
absent with --kl-coef 0), policy and value clip fractions, completion length, losses.
eval.json: the held-out numbers of common.held_out, before and after.
"""
from __future__ import annotations

import time

import torch

from minipost import checkpoint, distributed
from minipost.losses import gae, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from minipost.rollout import batch_stats, batched, completion_logps, rollout_kl
from minipost.seeding import rng
from minipost.stages import common
from minipost.training import Progress, clip_and_step, make_optimizer, set_lr
from minipost.value_head import ValueHead

VALUE_HEAD_FILE = "value_head.safetensors"


def add_args(p, stage):
    p.set_defaults(steps=100, batch_size=16, lr=1e-4, warmup=5)
    g = p.add_argument_group("ppo")
    common.add_rl_args(g, group_size=4)
    g.add_argument("--kl-coef", type=float, default=0.05, help="per-token KL penalty (0: no reference model)")
    g.add_argument("--gamma", type=float, default=1.0, help="discount of GAE")
    g.add_argument("--lam", type=float, default=0.95, help="lambda of GAE (bias/variance trade-off)")
    g.add_argument("--ppo-epochs", type=int, default=2, help="passes over each rollout batch")
    g.add_argument("--cliprange", type=float, default=0.2, help="clip width of the policy ratio")
    g.add_argument("--cliprange-value", type=float, default=0.2, help="clip width of the value change")
    g.add_argument("--vf-coef", type=float, default=0.1, help="weight of the value loss")
    g.add_argument("--value-lr", type=float, default=1e-3, help="peak learning rate of the value head")


def shaped_rewards(scores: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
                   mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token PPO rewards: -kl_coef * (old - ref) on each completion token, plus the score
    on the last completion token.

    scores:    [N] sequence score of each completion
    old_logps: [N, C] log pi_old of the completion tokens
    ref_logps: [N, C] log pi_ref of the same tokens, or None (no KL term)
    mask:      [N, C] True on completion tokens; every row needs at least one
    returns:   [N, C] float32, 0 off the mask
    """
    mask = mask.bool()
    if not mask.any(1).all():
        raise ValueError("every completion needs at least one token to carry its score")
    zero = torch.zeros((), dtype=old_logps.dtype, device=old_logps.device)
    rewards = torch.zeros_like(old_logps)
    if ref_logps is not None:
        rewards = torch.where(mask, -kl_coef * (old_logps - ref_logps), zero)
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, columns, -1).max(1).values  # [N] index of each row's last active token
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def run(args):
    started = time.time()
    if args.init is None:
        raise SystemExit("train.py: error: --stage ppo needs --init (an SFT checkpoint)")
    common.seed_everything(args.seed)
    model, tok = common.prepare_model(args)
    head_path = checkpoint.checkpoint_dir(args.out) / VALUE_HEAD_FILE if args.resume else None
    if head_path is not None and head_path.is_file():
        head = ValueHead.load(head_path)
    else:
        head = ValueHead(model.cfg.d_model)
        torch.nn.init.zeros_(head.proj.weight)
    head = head.to(args.device)
    train, val, ref_scorer, reward, held_out = common.rl_setup(args, model, tok, args.kl_coef)
    before = common.held_out_before(held_out, args)
    optimizer = make_optimizer(model, args.lr)
    optimizer.add_param_group({"params": list(head.parameters()), "weight_decay": 0.0,
                               "lr": args.value_lr, "lr_scale": args.value_lr / args.lr})
    net = distributed.wrap(model, head)  # DDP over policy and critic under torchrun

    def policy_and_values(mb):  # both in one forward (DDP's, under torchrun)
        logps, hidden = completion_logps(model, mb, return_hidden=True)
        return logps, head.values(hidden)
    start = common.resume_step(args, optimizer)

    def save(step):  # the critic goes into the same unit as the policy and the optimizer
        common.save_stage(model, tok, args, optimizer, step, heads={VALUE_HEAD_FILE: head},
                          **before, value_head=VALUE_HEAD_FILE)

    with Progress(args, start, save, optimizer) as progress:
        for step in range(start, args.steps):
            t0 = time.time()
            lr = set_lr(optimizer, step, args)
            # 1.-2. rollout and scores
            ro = common.step_rollout(model, tok, train, step, args, reward)
            t1 = time.time()
            # 3.-5. per-token rewards, the critic's values, GAE
            with torch.no_grad():
                old_values = batched(lambda mb: head.values(completion_logps(model, mb, return_hidden=True)[1]),
                                     ro, args.batch_size)
                ref_logps = ref_scorer(ro) if ref_scorer is not None else None
            rewards = shaped_rewards(ro.rewards, ro.old_logps, ref_logps, ro.mask, args.kl_coef)
            advantages, returns = gae(rewards, old_values, ro.mask, gamma=args.gamma, lam=args.lam)
            advantages = whiten(advantages, ro.mask)
            record = {"lr": lr, **batch_stats(ro), "value_mean": masked_mean(old_values, ro.mask).item()}
            if ref_logps is not None:
                record["kl"] = rollout_kl(ro, ref_logps)
            # 6. update: --ppo-epochs passes over random minibatches, one optimizer step each
            model.train()
            order = rng(args.seed, "minibatches", step)
            sums, count = {}, 0
            for _ in range(args.ppo_epochs):
                for idx in torch.randperm(len(ro.texts), generator=order).split(args.batch_size):
                    mb = ro.rows(idx)
                    idx = idx.to(ro.mask.device)
                    logps, values = net(policy_and_values, mb)
                    pg_loss, pg_clip = ppo_policy_loss(logps, mb.old_logps, advantages[idx], mb.mask, args.cliprange)
                    vf_loss, vf_clip = ppo_value_loss(values, old_values[idx], returns[idx], mb.mask,
                                                      args.cliprange_value)
                    loss = pg_loss + args.vf_coef * vf_loss
                    loss.backward()
                    norm = clip_and_step(optimizer, loss.item(), step)
                    with torch.no_grad():  # k2 estimate of KL(pi_old || pi) just before this step
                        approx_kl = 0.5 * masked_mean((logps - mb.old_logps) ** 2, mb.mask)
                    for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_frac", pg_clip),
                                 ("vf_clip_frac", vf_clip), ("approx_kl", approx_kl), ("grad_norm", norm)):
                        sums[k] = sums.get(k, 0.0) + (v.item() if torch.is_tensor(v) else v)
                    count += 1
            record.update({k: v / count for k, v in sums.items()})
            record.update(rollout_s=t1 - t0, update_s=time.time() - t1)
            progress.log(step, distributed.mean_across_ranks(record),  # torchrun: the mean over the ranks
                         evaluate=lambda: common.held_out_record(held_out()))
    save(args.steps)
    return common.finish(args, {**before, **held_out(), "eval_prompts": len(val)}, started)
