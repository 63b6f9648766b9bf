"""The RL stages' prompts (GRPO, RLOO, PPO; best-of-n reads them too): which files, how many,
and whether they fit the model's context.

    --train-file / --val-file / --test-file   the user's own RL records (data.read_rl)
    --reward-model RUN, no files              the prompts of the built-in preference splits
                                              (pref_*), whose meta.fact the gold judge reads
    otherwise the built-in verifiable task that --rl-task names:
        product   rl_{train,val,test}: one item, 1-4 units at $1-$9, so the total is units x
                  price (the built-in model's task; data/make_data.py's --rl-* flags set it)
        sum       rl_sum_{train,val,test}: two items of one unit each at $1-$9, so the total is
                  a sum (the SmolLM2 recipe's task; data/records.py says why)

The held-out prompts are capped at --max-eval, train prompts never are.
"""
from __future__ import annotations

from pathlib import Path

from minipost.heldout import add_test_arg, test_path

BUILTIN_TASKS = {"product": "rl", "sum": "rl_sum"}  # --rl-task -> the built-in files' stem


def add_args(g) -> None:
    """The prompt flags of the RL stages, on the argument group g."""
    g.add_argument("--rl-task", default="product", choices=tuple(BUILTIN_TASKS),
                   help="the built-in verifiable task when no --train-file is given: product (one item, "
                        "units x price; rl_*) or sum (two one-unit items; rl_sum_*, the SmolLM2 recipe's)")
    g.add_argument("--train-file", type=Path, default=None,
                   help="RL prompts JSONL {\"prompt\", ...columns} (default: the built-in task's train split; "
                        "with --reward-model the built-in preference prompts of pref_train)")
    g.add_argument("--val-file", type=Path, default=None,
                   help="held-out RL prompts (default: the built-in task's val split; with --reward-model "
                        "those of pref_val)")
    add_test_arg(g, "the built-in task's test split, or pref_test with --reward-model")


def builtin_names(args) -> tuple[str, str, str]:
    """The built-in (train, val, test) file names the stage falls back to."""
    if getattr(args, "reward_model", None) is not None:
        return "pref_train", "pref_val", "pref_test"
    stem = BUILTIN_TASKS[getattr(args, "rl_task", "product")]
    return f"{stem}_train", f"{stem}_val", f"{stem}_test"


def preference_prompts(path) -> list[dict]:
    """The prompts of a preference file as RL records {"prompt", "meta"}: the replies dropped,
    meta (with the fact the gold judge checks) kept."""
    from minipost import data as datasets

    return [{"prompt": r["prompt"], **({"meta": r["meta"]} if "meta" in r else {})}
            for r in datasets.read_preferences(path)]


def _read(args, path, builtin_name: str) -> list[dict]:
    """A user's file as RL records, else the built-in one (preference prompts under --reward-model)."""
    from minipost import data as datasets

    if path is not None:
        return datasets.read_rl(path)
    if getattr(args, "reward_model", None) is not None:
        return preference_prompts(datasets.builtin(builtin_name))
    return datasets.read_rl(datasets.builtin(builtin_name))


def load_prompts(args) -> tuple[list[dict], list[dict]]:
    """(train records, held-out records capped at --max-eval) of {"prompt", ...columns}."""
    train_name, val_name, _ = builtin_names(args)
    return _read(args, args.train_file, train_name), _read(args, args.val_file, val_name)[: args.max_eval]


def load_test_prompts(args) -> list[dict] | None:
    """The test split's prompts (--max-eval of them), or None when heldout.test_path gives no
    test split (own validation data and no --test-file)."""
    name = builtin_names(args)[2]
    if test_path(args.test_file, args.val_file, name) is None:
        return None
    return _read(args, args.test_file, name)[: args.max_eval]


def check_prompts_fit(train: list[dict], val: list[dict], tok, cfg, args, test: list[dict] | None = None) -> None:
    """Refuse (one line naming the file and records) RL prompts that, with --max-new-tokens,
    do not fit the model's context: generation would run past the last RoPE position."""
    from minipost.chat import generation_prompt
    from minipost.validate import check_prompts_fit as check

    names = builtin_names(args)
    for records, path, name in ((train, getattr(args, "train_file", None), names[0]),
                                (val, getattr(args, "val_file", None), names[1]),
                                (test or [], getattr(args, "test_file", None), names[2])):
        check([len(generation_prompt(r["prompt"], tok)) for r in records], args.max_new_tokens, cfg.max_seq_len,
              path or f"the built-in {name}")
