"""JSONL readers, one per record format (DESIGN §5), each validating every line.

| reader             | one JSON object per line                                        |
|--------------------|-----------------------------------------------------------------|
| read_texts         | {"text": str}                                                    |
| read_sft           | {"messages": [{"role", "content"}, ...]}, ends with an assistant |
| read_preferences   | {"prompt": messages or str, "chosen": str, "rejected": str}      |
| read_rl            | {"prompt": messages or str, "answer": str}                       |
| read_labeled       | {"text": str, "label": int >= 0}  (linear probe)                 |

A string prompt becomes [{"role": "user", "content": prompt}]; a prompt given as messages
must end with a user message (the model replies to it). Blank lines are skipped and keys
beyond the required ones (e.g. "meta") are kept in the returned records.

Bad input raises DataError (a ValueError) whose message names the file, the line and
what was expected, e.g.
    data/sft.jsonl, line 7: "messages"[2]: unknown role 'bot', expected one of system, user, assistant
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from minipost.chat import validate_messages

REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """A data file does not hold what its reader expects."""


def _records(path) -> list[tuple[int, dict]]:
    """-> [(line_number, object)] for the non-blank lines of a JSONL file (1-based lines)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a JSONL file, one JSON object per line)")
    out = []
    with path.open("rb") as f:  # bytes, so that a bad encoding is reported with its line
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # -sig: tolerate a byte-order mark
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                "expected UTF-8 encoded JSON") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                "expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object {{...}}, got {_kind(obj)}")
            out.append((lineno, obj))
    if not out:
        raise DataError(f"{path}: the file is empty; expected at least one JSON object (one per line)")
    return out


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _field(obj: dict, key: str, types, expected: str, where: str):
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r} (expected {expected}); keys present: {sorted(obj)}")
    value = obj[key]
    types = types if isinstance(types, tuple) else (types,)
    # bool is a subclass of int in Python, but true/false is never a valid count or label.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise DataError(f"{where}: {key!r} must be {expected}, got {_kind(value)}")
    return value


def _messages(value, key: str, where: str) -> list[dict]:
    try:
        validate_messages(value)
    except ValueError as e:
        raise DataError(f"{where}: {key!r}: {e}") from None
    return [dict(m) for m in value]


def _prompt(obj: dict, where: str) -> list[dict]:
    value = _field(obj, "prompt", (str, list), "a string or a list of messages", where)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = _messages(value, "prompt", where)
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: the last 'prompt' message must be from the user (the model replies to it), "
                        f"got {messages[-1]['role']!r}")
    return messages


def _where(path, lineno: int) -> str:
    return f"{path}, line {lineno}"


def read_texts(path) -> list[str]:
    """{"text": str} per line -> the texts."""
    return [_field(obj, "text", str, "a string", _where(path, n)) for n, obj in _records(path)]


def read_sft(path) -> list[dict]:
    """{"messages": [...]} per line; at least one assistant message, the last one from the
    assistant (the turn being taught). Returns the records (extra keys kept)."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        value = _field(obj, "messages", list, "a list of {'role', 'content'} messages", where)
        messages = _messages(value, "messages", where)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must be from the assistant (the reply to learn), "
                            f"got {messages[-1]['role']!r}")
        out.append({**obj, "messages": messages})
    return out


def read_preferences(path) -> list[dict]:
    """{"prompt": messages or str, "chosen": str, "rejected": str} per line; the prompt is
    returned as messages ending with a user message."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        prompt = _prompt(obj, where)
        for key in ("chosen", "rejected"):
            _field(obj, key, str, "a string, the assistant's reply", where)
        out.append({**obj, "prompt": prompt})
    return out


def read_rl(path) -> list[dict]:
    """{"prompt": messages or str, "answer": str} per line; prompt normalized as above."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        prompt = _prompt(obj, where)
        _field(obj, "answer", str, "a string, the reference answer", where)
        out.append({**obj, "prompt": prompt})
    return out


def read_labeled(path) -> list[dict]:
    """{"text": str, "label": int >= 0} per line (classes 0..n_classes-1, for the linear probe)."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        _field(obj, "text", str, "a string", where)
        label = _field(obj, "label", int, "an integer class index >= 0", where)
        if label < 0:
            raise DataError(f"{where}: 'label' must be an integer class index >= 0, got {label}")
        out.append(dict(obj))
    return out


def builtin(name: str, root: str | Path | None = None) -> Path:
    """Path of the built-in file data/minimart/{name}.jsonl (e.g. "sft_train").

    The files are generated from a fixed seed, not stored: on first use this runs
    data/make_data.py's generate(out_dir) and says so. A SHA-256 of the generator (every
    data/*.py file: make_data.py and the modules it imports) is kept beside the files
    (GENERATOR_SHA256), so after an update of any of them the data is rebuilt rather than
    silently stale. root: the repository root (the parent of the minipost package by
    default; tests point it elsewhere).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"built-in data name must be a plain file stem like 'sft_train', got {name!r}")
    root = Path(root) if root is not None else REPO_ROOT
    out_dir = root / "data" / "minimart"
    path = out_dir / f"{name}.jsonl"
    generator = root / "data" / "make_data.py"
    stamp = out_dir / "GENERATOR_SHA256"
    # Same fingerprint as make_data.generator_sha256(): each data/*.py by name and content.
    listing = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                      for p in sorted(generator.parent.glob("*.py")))
    digest = hashlib.sha256(listing.encode()).hexdigest() if generator.is_file() else None
    built_by = stamp.read_text().strip() if stamp.is_file() else None
    if path.is_file() and (digest is None or built_by in (None, digest)):
        return path  # (no stamp: files put there by hand, which are taken as they are)
    if digest is None:
        raise FileNotFoundError(f"built-in data {path} is missing and its generator {generator} was not found; "
                                "run from a complete checkout of the repository")
    why = "not found" if not path.is_file() else "was built by an older generator (data/*.py)"
    print(f"built-in data {path} {why}: generating data/minimart/ with {generator}")
    spec = importlib.util.spec_from_file_location("minipost_make_data", generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out_dir)
    stamp.write_text(digest + "\n")
    if not path.is_file():
        available = sorted(p.stem for p in out_dir.glob("*.jsonl"))
        raise FileNotFoundError(f"no built-in data named {name!r}; available: {', '.join(available) or 'none'}")
    return path


# ----------------------------------------------------------------------------- preference pairs
# (rendered for the model; used by the reward model and DPO)

def tokenize_pairs(records: list[dict], tok, max_len: int) -> tuple[list[tuple], list[int]]:
    """Render each record's prompt + chosen and prompt + rejected (chat.render_completion: loss
    on the reply and its <|end|> only) -> (pairs [((ids, targets), (ids, targets))], kept),
    keeping the pairs whose full sequences (ids plus the final <|end|>) fit in max_len tokens;
    kept lists the indices of the records they came from."""
    from minipost.chat import render_completion

    pairs, kept = [], []
    for i, r in enumerate(records):
        chosen = render_completion(r["prompt"], r["chosen"], tok)
        rejected = render_completion(r["prompt"], r["rejected"], tok)
        if max(len(chosen[0]), len(rejected[0])) + 1 <= max_len:
            pairs.append((chosen, rejected))
            kept.append(i)
    return pairs, kept
