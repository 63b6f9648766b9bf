"""Input checks that turn a bad flag, config or file into one clear sentence, before any work.

Without them a bad value fails late and far from its cause (--lr -1 after 51 s of
evaluation, --seq-len 0 as an IndexError deep in packing) or is accepted silently
(--save-every -1, --warmup -5). Each check raises with the flag or file, the value and what
was expected:

    validate_args(args)                   every numeric flag, --device, --lora-targets, the RL
                                          reward flags (check_reward_args) (cli.parse)
    check_against_model(args, cfg)        --seq-len / --max-len vs the model's context (after loading)
    validate_config_dict(d, source)       the "model" section of a config.json
    load_tokenizer_checked(path)          a tokenizer.model that SentencePiece cannot read
    check_prompts_fit / check_pairs_differ / check_corpus_size   data that cannot train
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from minipost.checkpoint import CheckpointError


def _fail(msg: str):
    raise SystemExit(f"train.py: error: {msg}")


# flag (argparse dest): (lowest, is the lowest itself allowed, highest or None, what it is).
# A flag a stage does not have is skipped; None (the stage's default) is not checked.
RANGES: dict[str, tuple[float, bool, float | None, str]] = {
    "steps": (1, True, None, "optimizer steps"),
    "batch_size": (1, True, None, "examples per micro-batch"),
    "grad_accum": (1, True, None, "micro-batches per optimizer step"),
    "lr": (0, False, None, "the peak learning rate"),
    "warmup": (0, True, None, "warmup steps"),
    "threads": (1, True, None, "CPU threads"),
    "log_every": (1, True, None, "steps between log lines"),
    "eval_every": (0, True, None, "steps between held-out evals (0: only at the end)"),
    "save_every": (0, True, None, "steps between checkpoints (0: only at the end)"),
    "max_eval": (1, True, None, "held-out examples for generation metrics"),
    "interrupt_at": (1, True, None, "the step after which to act as if interrupted"),
    "lora_r": (1, True, None, "the LoRA rank"),
    "lora_alpha": (0, False, None, "the LoRA scale numerator"),
    "lora_dropout": (0, True, 1, "a dropout probability (below 1)"),
    "n_virtual": (1, True, None, "virtual tokens of prefix / prompt tuning"),
    "bottleneck": (1, True, None, "the adapter's bottleneck width"),
    "seq_len": (2, True, None, "tokens per training row"),
    "max_len": (1, True, None, "tokens per example"),
    "max_new_tokens": (1, True, None, "tokens generated per reply"),
    "held_out": (0, True, None, "held-out questions to answer (0: none)"),
    "vocab_size": (300, True, None, "the tokenizer's vocabulary (256 byte pieces + control symbols + merges)"),
    "eval_rows": (1, True, None, "held-out rows for the loss"),
    "replay": (0, True, 1, "a fraction of the batch"),
    "beta": (0, True, None, "a KL strength"),
    "label_smoothing": (0, True, 0.5, "the assumed fraction of flipped labels"),
    "margin": (0, True, None, "the reward margin"),
    "center_coef": (0, True, None, "the weight of the centering term"),
    "group_size": (1, True, None, "completions per prompt"),
    "prompts_per_step": (1, True, None, "prompts per rollout batch"),
    "temperature": (0, False, None, "the sampling temperature"),
    "kl_coef": (0, True, None, "the per-token KL penalty"),
    "gamma": (0, True, 1, "the discount"),
    "lam": (0, True, 1, "the GAE lambda"),
    "ppo_epochs": (1, True, None, "passes over each rollout batch"),
    "inner_epochs": (1, True, None, "optimizer steps per rollout batch"),
    "cliprange": (0, False, None, "the ratio clip width"),
    "cliprange_value": (0, False, None, "the value clip width"),
    "vf_coef": (0, True, None, "the value loss weight"),
    "value_lr": (0, False, None, "the value head's learning rate"),
    "epsilon": (0, False, None, "the ratio clip width"),
    "epsilon_high": (0, False, None, "the upper ratio clip width"),
    "max_n": (1, True, None, "samples per prompt"),
    "max_pairs": (1, True, None, "training pairs"),
}
# Where a stage needs more: group-relative advantages compare a completion with the others
# of its group, so a group of one has none (its std is undefined).
STAGE_RANGES = {stage: {"group_size": (2, True, None, "completions per prompt (a group of one has no baseline)")}
                for stage in ("grpo", "rloo")}
# The chat stage decodes greedily at --temperature 0 (its default); the RL stages sample.
STAGE_RANGES["chat"] = {"temperature": (0, True, None, "the sampling temperature (0: greedy)")}
_EXCLUSIVE_MAX = {"lora_dropout"}  # dropout 1 zeroes every input


def check_range(flag: str, value, lo, lo_ok: bool, hi, why: str) -> None:
    """Raise SystemExit unless lo <= value (lo < value if not lo_ok) and value <= hi."""
    name = "--" + flag.replace("_", "-")
    if isinstance(value, float) and not math.isfinite(value):
        _fail(f"{name} must be a finite number ({why}), got {value}")
    low_bad = value < lo if lo_ok else value <= lo
    high_bad = hi is not None and (value >= hi if flag in _EXCLUSIVE_MAX else value > hi)
    if low_bad or high_bad:
        want = f"{'at least' if lo_ok else 'greater than'} {lo}"
        if hi is not None:
            want += f" and {'below' if flag in _EXCLUSIVE_MAX else 'at most'} {hi}"
        _fail(f"{name} must be {want} ({why}), got {value}")


def check_device(device: str) -> None:
    """An unknown device string, or cuda / mps on a machine without one, is refused here,
    not at the first tensor moved there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        _fail(f"--device {device!r} is not a device (use cpu, cuda, cuda:N or mps): {e}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _fail(f"--device {device}: no CUDA GPU is available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            _fail(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            _fail(f"--device {device}: Apple's MPS backend is not available here (use --device cpu)")
    elif dev.type != "cpu":
        _fail(f"--device {device}: minipost runs on cpu, cuda or mps")


def check_lora_targets(targets: str) -> None:
    from minipost.peft.lora import LORA_TARGETS

    names = [t.strip() for t in targets.split(",")]
    unknown = [t for t in names if t not in LORA_TARGETS]
    if not names or unknown:
        _fail(f"--lora-targets {targets!r}: unknown module name(s) {unknown}; choose from {', '.join(LORA_TARGETS)}")
    if len(set(names)) != len(names):
        _fail(f"--lora-targets {targets!r} names a module twice")


def validate_args(args) -> None:
    """All the flag checks of the table above, plus --device and --lora-targets, at parse time."""
    ranges = {**RANGES, **STAGE_RANGES.get(getattr(args, "stage", None), {})}
    for flag, (lo, lo_ok, hi, why) in ranges.items():
        value = getattr(args, flag, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_range(flag, value, lo, lo_ok, hi, why)
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "peft", "none") in ("lora", "qlora") and getattr(args, "lora_targets", None) is not None:
        check_lora_targets(args.lora_targets)
    check_reward_args(args)


def check_reward_args(args) -> None:
    """--reward-model, --reward-fn and --reward-weights of the RL stages: one reward source,
    one weight per function, and an RM run that can score (its model, value head and the
    held-out normaliser in eval.json)."""
    from minipost.reward_fns import DEFAULT_REWARD_FNS

    rm, fns, weights = (getattr(args, k, None) for k in ("reward_model", "reward_fn", "reward_weights"))
    if rm is not None and (fns is not None or weights is not None):
        _fail("--reward-model and --reward-fn / --reward-weights are two rewards; give one of them")
    if weights is not None:
        n = len(fns) if fns is not None else len(DEFAULT_REWARD_FNS)
        if len(weights) != n:
            what = f"{n} --reward-fn functions" if fns is not None else f"the {n} built-in reward functions"
            _fail(f"--reward-weights gives {len(weights)} weights for {what}; give one per function")
        if not all(math.isfinite(w) for w in weights):
            _fail(f"--reward-weights {weights}: every weight must be a finite number")
    if rm is not None:
        check_reward_model_run(rm)


def check_reward_model_run(run) -> None:
    """A --reward-model directory must be a finished --stage rm run: config.json of stage rm,
    value_head.safetensors, and eval.json with a finite reward_mean and a reward_std > 0."""
    run = Path(run)
    if not run.is_dir():
        _fail(f"--reward-model {run}: no such directory (give the --out of a --stage rm run)")
    from minipost.checkpoint import current_checkpoint, read_json

    unit = current_checkpoint(run) or run  # the current checkpoint unit, or a run of the flat layout
    missing = [f for f in ("config.json", "value_head.safetensors") if not (unit / f).is_file()]
    missing += [] if (run / "eval.json").is_file() else ["eval.json"]
    if missing:
        _fail(f"--reward-model {run}: not a finished --stage rm run, {', '.join(missing)} missing")

    stage = read_json(unit / "config.json").get("stage")
    if stage != "rm":
        _fail(f"--reward-model {run}: a --stage {stage} run, not a reward model (--stage rm)")
    stats = read_json(run / "eval.json")
    mean, std = stats.get("reward_mean"), stats.get("reward_std")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (mean, std)) or std <= 0:
        _fail(f"--reward-model {run}: eval.json needs a finite reward_mean and a reward_std > 0 (the held-out "
              f"normaliser), got reward_mean {mean}, reward_std {std}")


def check_against_model(args, cfg) -> None:
    """Flags that must fit the loaded model: rows and examples no longer than its context
    (RoPE positions and the KV cache end at cfg.max_seq_len)."""
    for flag in ("seq_len", "max_len"):
        value = getattr(args, flag, None)
        if value is not None and value > cfg.max_seq_len:
            _fail(f"--{flag.replace('_', '-')} {value} is longer than the model's context "
                  f"(max_seq_len {cfg.max_seq_len}); use at most {cfg.max_seq_len}")


# ------------------------------------------------------------------ config.json
_INT_FIELDS = ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len")
_OPTIONAL_INT_FIELDS = ("n_kv_head", "d_ff")
_FLOAT_FIELDS = ("rope_theta", "norm_eps")


def validate_config_dict(d, source: str | Path) -> None:
    """Raise CheckpointError naming `source` and the key unless d is a valid GPTConfig dict:
    positive integers (not "two", not 0, not true), positive finite floats, a boolean
    tie_embeddings, and head counts that divide."""
    def bad(msg):
        raise CheckpointError(f"{source}: model config: {msg}")

    if not isinstance(d, dict):
        bad(f"expected an object of GPTConfig fields, got {type(d).__name__}")
    from dataclasses import fields

    from minipost.config import GPTConfig

    known = {f.name for f in fields(GPTConfig)}
    if set(d) - known:
        bad(f"unknown keys {sorted(set(d) - known)}; expected {sorted(known)}")
    for key in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
        if key not in d:
            if key in _INT_FIELDS[:4]:
                bad(f"{key} is missing")
            continue
        v = d[key]
        if v is None and key in _OPTIONAL_INT_FIELDS:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            bad(f"{key} must be a positive integer, got {v!r}")
    for key in _FLOAT_FIELDS:
        v = d.get(key, 1.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            bad(f"{key} must be a positive number, got {v!r}")
    if not isinstance(d.get("tie_embeddings", True), bool):
        bad(f"tie_embeddings must be true or false, got {d['tie_embeddings']!r}")
    n_head, n_kv = d["n_head"], d.get("n_kv_head") or d["n_head"]
    if d["d_model"] % n_head:
        bad(f"d_model {d['d_model']} is not divisible by n_head {n_head}")
    if n_head % n_kv:
        bad(f"n_head {n_head} is not divisible by n_kv_head {n_kv}")
    if (d["d_model"] // n_head) % 2:
        bad(f"head_dim = d_model / n_head = {d['d_model'] // n_head} must be even (rotary embeddings)")


def load_tokenizer_checked(path: str | Path):
    """Tokenizer(path), with a file SentencePiece cannot parse (or one without the chat
    control symbols) reported as a CheckpointError naming the file."""
    from minipost.tokenizer import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (every checkpoint carries its tokenizer.model)")
    try:
        return Tokenizer(path)
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a minipost SentencePiece tokenizer model: {e}") from e


# ------------------------------------------------------------------ data that cannot train
def check_prompts_fit(prompt_lengths: list[int], max_new_tokens: int, context: int, source) -> None:
    """RL prompts: each prompt plus --max-new-tokens must fit the context; names the records
    (1-based) that do not."""
    too_long = [i + 1 for i, n in enumerate(prompt_lengths) if n + max_new_tokens > context]
    if too_long:
        worst = max(prompt_lengths)
        _fail(f"{source}: {len(too_long)} prompt(s) (records {too_long[:5]}) do not fit the model's context: "
              f"prompt + --max-new-tokens {max_new_tokens} > max_seq_len {context} (longest prompt {worst} "
              f"tokens); shorten them or lower --max-new-tokens")


def check_pairs_differ(records: list[dict], source) -> None:
    """Preference pairs whose chosen equals rejected carry no preference (their DPO and
    reward-model gradients are exactly zero); names the records (1-based)."""
    same = [i + 1 for i, r in enumerate(records) if r.get("chosen") == r.get("rejected")]
    if same:
        _fail(f"{source}: records {same[:5]} have chosen == rejected ({len(same)} of {len(records)}); "
              f"a pair must prefer one reply over a different one")


def check_corpus_size(n_tokens: int, seq_len: int, source) -> None:
    """A pretraining corpus needs at least one full row of --seq-len tokens."""
    if n_tokens < seq_len:
        _fail(f"{source}: the corpus has {n_tokens} tokens, fewer than one training row of --seq-len "
              f"{seq_len}; add text or lower --seq-len")
