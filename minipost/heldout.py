"""The held-out numbers every stage writes into eval.json (docs/DESIGN.md §10).

Settings are chosen on the validation split; the test split, which no choice has seen, is
reported beside it under the same names prefixed "test_" (val_loss -> test_loss). On a model
built on a real pretrained base (one that speaks English) the post-training stages also ask
the general questions of data/general.py: general_accuracy before and after is the
forgetting check.
"""
from __future__ import annotations

from pathlib import Path

from minipost import checkpoint, pretrained



def add_test_arg(p, builtin_name: str) -> None:
    """--test-file: the split reported beside --val-file (settings are chosen on val only)."""
    p.add_argument("--test-file", type=Path, default=None,
                   help=f"test JSONL reported beside the validation split (default: the built-in {builtin_name} "
                        f"when --val-file is not given, else none: no test numbers)")


def test_path(test_file, val_file, builtin_name: str):
    """The test split to report: --test-file, else the built-in one when validation is on the
    built-in data too, else None (own validation data and no --test-file: no test numbers)."""
    from minipost import data as datasets

    if test_file is not None:
        return test_file
    return datasets.builtin(builtin_name) if val_file is None else None


def test_name(name: str) -> str:
    """A validation metric's name on the test split: val_loss -> test_loss, fact_accuracy ->
    test_fact_accuracy (and its start value test_fact_accuracy_before)."""
    return "test_" + name.removeprefix("val_")


def on_pretrained_base(init) -> bool:
    """True when init is a real model ("smollm2", ...) or a run built on one (config.json
    "base", followed back): a model that speaks English, so general questions mean something."""
    for _ in range(32):  # a chain of runs is short; a cycle must not hang
        if init is None or pretrained.is_pretrained_source(init):
            return init is not None
        cfg = (checkpoint.current_checkpoint(init) or Path(init)) / "config.json"  # a unit, or the flat layout
        if not cfg.is_file():
            return False
        init = checkpoint.read_json(cfg).get("base")
    return False


def held_out(args, model, tok, measure, val, test=None, general: bool = True) -> dict:
    """The held-out numbers of eval.json: measure(val) under its own names, measure(test)
    under test_name()s when there is a test split, and on a model built on a pretrained base
    general_accuracy on general_val and test_general_accuracy on general_test (data/general.py,
    --max-eval questions each; skipped on the built-in model, which speaks no English, and
    with general=False: the reward model and the probe do not generate)."""
    out = dict(measure(val))
    if test is not None:
        out.update({test_name(k): v for k, v in measure(test).items()})
    return {**out, **general_numbers(args, model, tok)} if general else out


def general_numbers(args, model, tok) -> dict:
    """general_accuracy (general_val) and test_general_accuracy (general_test), --max-eval
    questions each, on a model built on a pretrained base; {} on the built-in model."""
    if not on_pretrained_base(args.init):
        return {}
    from minipost import data as datasets
    from minipost.evaluate import general_accuracy

    out = {}
    for split, prefix in (("general_val", ""), ("general_test", "test_")):
        questions = datasets.read_general(datasets.builtin(split))[: args.max_eval]
        out.update({prefix + k: v for k, v in general_accuracy(model, tok, questions).items()})
    return out


def as_before(metrics: dict) -> dict:
    """The starting model's numbers under the names eval.json keeps them: name_before."""
    return {f"{k}_before": v for k, v in metrics.items()}
