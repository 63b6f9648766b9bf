"""Reward functions named on the command line, TRL's convention, and their weighted sum.

A reward function scores a batch of completions:

    f(completions: list[str], **columns) -> list[float]        one finite number per completion

The keyword arguments, each a list aligned with `completions`:
    prompts    the prompt messages of each completion (as TRL passes them)
    ended      whether each reply closed its turn with <|end|> (False: cut off, or it ran on
               into another role's turn); a function that does not care takes **kwargs
    <column>   every other key of the RL records (data.read_rl keeps them), e.g. "answer";
               None for a record that lacks a key some other record of the batch has
So a function written for TRL's GRPOTrainer, `def f(completions, answer, **kwargs)`, works here.

    load_reward_fn("package.module:function")   an importable module
    load_reward_fn("path/to/file.py:function")   any Python file (run as a module of its own)
    combined_reward(fns, weights, completions, records) = sum_k weights[k] * f_k(...)

Errors name the function and, where it is one record's fault, the record's index: a
function that raises (retried one record at a time to find the record), returns the wrong
number of values, or returns something that is not a finite number.

The built-in Minimart rewards (rewards.py) are two such functions and the default; their sum
is, number for number, task_reward + (format_reward if ended): rollout.builtin_reward.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import re
from pathlib import Path
from typing import Callable, Sequence

from minipost import rewards as R

RewardFn = Callable[..., Sequence[float]]
DEFAULT_REWARD_FNS = ("minipost.reward_fns:minimart_task_reward", "minipost.reward_fns:minimart_format_reward")


_WHOLE_NUMBER = re.compile(r"\s*[-+]?[0-9]+\s*")  # what int() takes in task_reward, ASCII digits only


def is_whole_number(answer) -> bool:
    """Whether an "answer" column value is what the built-in task reward can compare: a whole
    number as a string, e.g. "23"."""
    return isinstance(answer, str) and _WHOLE_NUMBER.fullmatch(answer) is not None


class RewardFnError(ValueError):
    """A reward function cannot be loaded, or what it returned (or raised) is unusable."""


# ----------------------------------------------------------------------------- the built-in two

def _answers(columns: dict, n: int, who: str) -> list:
    answers = columns.get("answer")
    if answers is None:
        raise RewardFnError(f"{who} needs an 'answer' column (the order total, a decimal string such as \"23\") "
                            f"in the RL records; the records have: {sorted(k for k in columns if k != 'prompts')}")
    for i, a in enumerate(answers):
        if not is_whole_number(a):
            raise RewardFnError(f"{who}: record {i} has 'answer' {a!r}; expected a whole number as a string, e.g. \"23\"")
    return answers


def minimart_task_reward(completions: list[str], **columns) -> list[float]:
    """1.0 where the completion's last "Total: $N" equals the record's "answer", else 0.0
    (rewards.task_reward). Needs the "answer" column."""
    answers = _answers(columns, len(completions), "minimart_task_reward")
    return [R.task_reward(c, a) for c, a in zip(completions, answers)]


def minimart_format_reward(completions: list[str], ended: Sequence[bool] | None = None, **columns) -> list[float]:
    """rewards.format_reward (0.1 for exactly one well-formed "Total: $N") where the reply closed
    its turn with <|end|> (`ended`; every reply counts as ended when it is not given), else 0.0."""
    ended = [True] * len(completions) if ended is None else ended
    return [R.format_reward(c) if e else 0.0 for c, e in zip(completions, ended)]


# ----------------------------------------------------------------------------- loading

def load_reward_fn(spec: str) -> RewardFn:
    """"module:function" or "path/to/file.py:function" -> the function.

    A .py file (or a spec with a "/") is run as a module of its own, so it needs not be on
    sys.path; a module name is imported as usual.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise RewardFnError(f"reward function {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise RewardFnError(f"reward function {spec!r}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"minipost_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise RewardFnError(f"reward function {spec!r}: running {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            hint = f"; for a file give its path, e.g. {target.replace('.', '/')}.py:{name}"
            raise RewardFnError(f"reward function {spec!r}: cannot import {target!r} ({e}){hint}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        what = "is not callable" if fn is not None else "is not defined there"
        raise RewardFnError(f"reward function {spec!r}: {name!r} {what}; callables in {target}: {', '.join(found)}")
    try:
        fn.reward_name = getattr(fn, "reward_name", spec)  # for errors and logs
    except AttributeError:  # a builtin takes no attributes; reward_name() falls back to its qualname
        pass
    return fn


def load_reward_fns(specs: Sequence[str] | None = None) -> list[RewardFn]:
    """Each spec loaded; no specs (None or empty): the built-in Minimart rewards."""
    return [load_reward_fn(s) for s in (specs or DEFAULT_REWARD_FNS)]


def reward_name(fn) -> str:
    """How errors and logs call a function: its spec when loaded by name, else module.qualname."""
    return getattr(fn, "reward_name", None) or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


# ----------------------------------------------------------------------------- scoring

def reward_columns(records: Sequence[dict], ended: Sequence[bool] | None = None) -> dict[str, list]:
    """The keyword arguments for len(records) completions (see the module docstring)."""
    keys = dict.fromkeys(k for r in records for k in r if k != "prompt")
    columns = {k: [r.get(k) for r in records] for k in keys}
    columns["prompts"] = [r.get("prompt") for r in records]
    if ended is not None:
        columns["ended"] = list(ended)
    return columns


def _call(fn, completions: list[str], columns: dict) -> list[float]:
    """fn on the batch -> its values as floats, or RewardFnError naming fn and the record at fault."""
    name, n = reward_name(fn), len(completions)
    try:
        values = fn(list(completions), **columns)
    except RewardFnError:
        raise
    except Exception as e:
        for i in range(n):  # find the record: one at a time (only on this error path)
            try:
                fn([completions[i]], **{k: v[i: i + 1] for k, v in columns.items()})
            except Exception as one:
                raise RewardFnError(f"reward function {name} raised on record {i} "
                                    f"({type(one).__name__}: {one})") from one
        raise RewardFnError(f"reward function {name} raised on the batch of {n} completions, though on none "
                            f"of them alone ({type(e).__name__}: {e})") from e
    if hasattr(values, "tolist"):  # a tensor or a NumPy array
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise RewardFnError(f"reward function {name} returned {type(values).__name__}; expected a list of "
                            f"{n} numbers, one per completion")
    if len(values) != n:
        raise RewardFnError(f"reward function {name} returned {len(values)} values for {n} completions; "
                            "expected one number per completion")
    for i, v in enumerate(values):
        if not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise RewardFnError(f"reward function {name} returned {v!r} for record {i}; expected a finite number")
    return [float(v) for v in values]


def score_each(fns: Sequence[RewardFn], completions: list[str], records: Sequence[dict],
               ended: Sequence[bool] | None = None) -> list[list[float]]:
    """[len(fns)][len(completions)]: each function's rewards (for logging them apart, as TRL's
    rewards/<name>/mean). records[i] is the RL record completion i answers."""
    if len(records) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(records)} records; give one record per completion")
    columns = reward_columns(records, ended)
    return [_call(fn, completions, columns) for fn in fns]


def combined_reward(fns: Sequence[RewardFn], weights: Sequence[float] | None, completions: list[str],
                    records: Sequence[dict], ended: Sequence[bool] | None = None) -> list[float]:
    """sum_k weights[k] * fns[k](completions, **columns), per completion (weights None: all 1)."""
    weights = [1.0] * len(fns) if weights is None else list(weights)
    if len(weights) != len(fns):
        raise RewardFnError(f"{len(weights)} reward weights for {len(fns)} reward functions; give one per function")
    total = [0.0] * len(completions)
    for w, values in zip(weights, score_each(fns, completions, records, ended)):
        total = [t + w * v for t, v in zip(total, values)]
    return total
