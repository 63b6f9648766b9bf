"""Recipes: each stage's default flags for a real model (`--recipe`), chosen by measurement.

The defaults in each stage's add_args are tuned for the built-in 1.2M-parameter model. On
SmolLM2-135M-Instruct (30 layers, d_model 576) the same flags would train the wrong way
(full fine-tuning at the built-in model's lr) and take hours (350 DPO steps of 8 pairs), so
a recipe replaces them. A recipe sets defaults only: a flag given on the command line
always wins (argparse's set_defaults, applied before parsing).

    --recipe auto     (default) smollm2 when --init is smollm2 or a run that descends from it
                      (the "base" entries of its config.json); none otherwise, so runs of the
                      built-in model keep their defaults unchanged
    --recipe smollm2  the SmolLM2 recipe whatever --init is
    --recipe none     the stage's own defaults

Why auto rather than only an explicit flag: a DPO, RM or GRPO run started from a SmolLM2
SFT run (`--init out/smol/sft`) needs the SmolLM2 settings as much as the SFT run did, and
a user who forgot --recipe would otherwise wait hours for a run that is not the intended one.

The numbers behind each choice are in the comments of RECIPES (measured on this project's
2-core CPU, one torch thread, on the validation split of the built-in data; docs/smollm2.md).
The first recipes were chosen on a CPU without AVX512-BF16/AMX, where --precision auto runs
float32; the later ones on a CPU with AMX, where auto picks bf16 and a LoRA-SFT step took
3.3 s instead of 12-14 s. Where a choice was re-checked in bf16 the comment says so.
"""
from __future__ import annotations

from pathlib import Path

from minipost.checkpoint import CheckpointError, current_checkpoint, read_json

AUTO = "auto"
NONE = "none"
SMOLLM2 = "smollm2"

EVAL = 200  # --max-eval: every item of the built-in validation and test splits (200 each)

RECIPES: dict[str, dict[str, dict]] = {
    SMOLLM2: {
        # LoRA on every linear layer, r 16, alpha 32 (the calibration, transformers +
        # PEFT: all-linear r 16 at lr 1e-3 took fact_accuracy 0.27 -> 0.77 in 150 steps of 8
        # conversations). The SFT tickets are 87-201 tokens (median 124) in SmolLM2's tokenizer:
        # rows of 256 hold about two packed tickets, so 4 rows are ~8 conversations a step; the
        # multi-turn conversations among them (data/README.md) are cut to their first 256
        # tokens. Replies are at most ~35 tokens: 48 new tokens judge them whole. The settings
        # were chosen with --max-eval 40 (the first 40 items of each validation set); the recipe
        # now judges every item (EVAL), so each reported number rests on
        # 150-200 test items rather than 40 (at 40 one question moves an accuracy by 2.5 points).
        # Chosen on the validation split (docs/smollm2.md, float32, one thread, 12-14 s a step):
        #   30 steps, lr 2e-3            fact 0.81, general_accuracy 0.80 -> 0.25 (forgets: it
        #                                copies words out of any question, "heya, it's capital of Spain")
        #   30 steps, lr 1e-3            fact 0.71, general 0.40: a lower lr does not stop it
        #   30 steps, --self-replay 0.2  fact 0.71, general 0.60
        #   30 steps x 8 rows, replay 0.4  fact 0.68, general 0.75
        #   60 steps, --self-replay 0.3  fact 0.87, general 0.85
        # The same in bf16 (AMX, 3.3 s a step): fact 0.26 -> 0.90, general 0.775 -> 0.75; with
        # --peft qlora (NF4 base, 4.1 s a step): fact 0.19 -> 0.84, general 0.675 -> 0.525.
        # bf16 on every validation item (2.7 s a step): 60 steps fact 0.335 -> 0.870 (test 0.891,
        # under the 0.90 goal); 90 steps 0.335 -> 0.894, general 0.81 -> 0.81 (this recipe).
        # With --self-replay 0.3 and --peft qlora: fact 0.298 -> 0.894 (test 0.301 -> 0.942), 606 s.
        # Once sft_train gained the multi-turn and policy conversations (36-897 tokens), replay 0.3
        # forgot more (validation general 0.793 -> 0.707, fact 0.901); 0.4: general -> 0.759, fact
        # 0.882; 0.5: general -> 0.793, fact 0.888, voice 0.51 (this recipe; test fact 0.910).
        "sft": dict(peft="lora", lora_r=16, lora_alpha=32, lr=2e-3, warmup=5, steps=90, batch_size=4,
                    seq_len=256, max_eval=EVAL, max_new_tokens=48, self_replay=0.5),
        # DPO from the SFT run, LoRA on the merged SFT weights (the reference is the same model
        # with its adapter off, so no second copy), a LoRA-scale lr. Chosen on the validation
        # split (docs/smollm2.md), 4 pairs a step from the SFT recipe's run:
        #   float32, 30 steps, lr 5e-4  pref 0.925, fact 0.87 -> 0.84, general_accuracy 0.85 -> 0.225
        #   float32, 30 steps, lr 2e-4  pref 0.975, fact 0.87 -> 0.87, general 0.85 -> 0.775
        #   bf16 (AMX), lr 2e-4, from a bf16 SFT run (fact 0.90, voice 0.575):
        #     30 steps                    pref 0.925, voice 0.95, fact -6.4 points
        #     90 steps                    pref 0.95, but the replies fall apart (format 0.225,
        #                                 fact 0.39): the chosen replies' likelihood fell too
        #     90 steps, --rpo-alpha 1     pref 0.95, voice 1.00, fact -12.9
        #     90 steps, rpo 1, beta 0.5   pref 0.925, voice 1.00, fact -9.7
        #     60 steps, --rpo-alpha 1     pref 0.95, voice 1.00, fact -6.4 (this recipe)
        #   every item (--max-eval 200), from the 90-step SFT run: pref 0.955, voice 0.70 -> 0.995,
        #   fact 0.888 -> 0.913 (test: pref 0.965, fact 0.930 -> 0.942; 662 s)
        "dpo": dict(peft="lora", lora_r=16, lora_alpha=32, lr=2e-4, warmup=5, steps=60, batch_size=4,
                    rpo_alpha=1.0, max_eval=EVAL, max_new_tokens=48),
        # The reward model from the SFT run: LoRA, the scalar head trained whole. Validation
        # pair_accuracy (swapped-fact pairs): float32, 40 steps 0.85 (0.71); bf16, 40 steps
        # 0.85 (0.71), 150 steps 0.95 (0.90), 250 steps 0.95 (0.90). On all 200 validation
        # pairs (100 swapped-fact; test: 97): 150 steps 0.945 (0.89), 300 steps 0.95 (0.90)
        # (this recipe; test 0.92 (0.835) -> 0.955 (0.907), 880 s).
        "rm": dict(peft="lora", lora_r=16, lora_alpha=32, lr=5e-4, warmup=5, steps=300, batch_size=4,
                   max_eval=EVAL),
        # GRPO from the SFT run: 4 prompts x 8 completions a step; a reply with its total is
        # ~25 tokens, so 40 new tokens. Validation task_accuracy (docs/smollm2.md):
        #   float32, 20 steps, beta 0.04       0.175 -> 0.30
        #   bf16, 20 steps, beta 0.04          0.30 -> 0.425
        #   bf16, 40 steps, beta 0.04          stopped at step 21: the replies shrank to ~6 tokens
        #                                      ("Total: $N" without the sum), every group's rewards
        #                                      equal (no signal left), kl 3.7
        #   bf16, 30 steps, beta 0.1           0.30 -> 0.375, replies stay ~20 tokens (this recipe)
        #   every item: from the 60-step SFT 0.25 -> 0.325 (test +9.0); 40 steps at lr 3e-4 and
        #   8 prompts x 4 a step did worse (test +8.5, +7.5); from the 90-step SFT 0.29 -> 0.26
        #   (lr 2e-4: 0.29 -> 0.25): that model copies the unit price whenever an order has two
        #   or more units (right in 4-9% of its samples there), so no group holds a right reply
        #   to reinforce. On the sums task (--rl-task sum, data/records.py), chosen on validation
        #   starts: two items 0.74 (this), one or two items 0.825 (above the 0.2-0.8 band), three
        #   items 0.03; from the 90-step SFT, 30 steps: 0.74 -> 0.96 (test 0.69 -> 0.985), 685 s
        "grpo": dict(peft="lora", lora_r=16, lora_alpha=32, lr=5e-4, warmup=2, steps=30, batch_size=8,
                     beta=0.1, prompts_per_step=4, group_size=8, max_new_tokens=40, rl_task="sum", max_eval=EVAL),
        # RLOO and PPO: GRPO's rollout shape and LoRA, measured once each (docs/smollm2.md),
        # not tuned. Sums from the 90-step SFT: RLOO 0.74 -> 0.985 (test 0.69 -> 0.99, 700 s),
        # PPO 0.74 -> 0.965 (test 0.69 -> 0.975, 780 s: its 2 epochs of minibatches of 8 make
        # 8 optimizer steps a step, hence its lower lr and fewer steps).
        "rloo": dict(peft="lora", lora_r=16, lora_alpha=32, lr=5e-4, warmup=2, steps=30, batch_size=8, beta=0.1,
                     prompts_per_step=4, group_size=8, max_new_tokens=40, rl_task="sum", max_eval=EVAL),
        "ppo": dict(peft="lora", lora_r=16, lora_alpha=32, lr=2e-4, warmup=2, steps=20, batch_size=8,
                    prompts_per_step=4, group_size=8, max_new_tokens=40, rl_task="sum", max_eval=EVAL),
        # Continual pretraining on the new-domain text, LoRA, a quarter of each batch replayed
        # from the built-in general corpus. Measured: domain loss 3.77 -> 1.32 (validation), but
        # general_accuracy 0.825 -> 0.526 (test): raw text costs the instruct model its chat
        # answers. 227 s, 5.1 GB.
        "cpt": dict(peft="lora", lora_r=16, lora_alpha=32, lr=5e-4, warmup=5, steps=60, batch_size=4,
                    seq_len=256, replay=0.25, max_eval=EVAL),
        # The probe reads the frozen model: only the head trains, the built-in defaults hold
        # (150 steps of 32 messages: test intent accuracy 0.9975 against a majority class of
        # 0.245, 80 s).
        "probe": dict(),
    },
}
CHOICES = (AUTO, NONE, *RECIPES)


def descends_from(init, source: str, depth: int = 8) -> bool:
    """True when --init is `source` itself or a run whose config.json "base" chain reaches it."""
    for _ in range(depth):
        if init is None:
            return False
        if str(init) == source:
            return True
        try:  # a run's config.json sits in its current checkpoint unit (step-N/), or flat in the run
            unit = current_checkpoint(init) or Path(init)
        except CheckpointError:
            return False
        config = unit / "config.json"
        if not config.is_file():
            return False
        init = read_json(config).get("base")
    return False


def resolve(choice: str, init) -> str:
    """--recipe and --init -> the recipe that applies ("none" or a key of RECIPES)."""
    if choice not in CHOICES:
        raise SystemExit(f"train.py: error: --recipe must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice != AUTO:
        return choice
    return next((name for name in RECIPES if descends_from(init, name)), NONE)


def defaults(recipe: str, stage: str) -> dict:
    """The flag defaults a recipe sets for a stage ({} for none, or a stage it leaves alone)."""
    return dict(RECIPES.get(recipe, {}).get(stage, {}))
