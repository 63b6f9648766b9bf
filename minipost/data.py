"""JSONL readers, one per record format (docs/DESIGN.md §5), each validating every line.

The accepted forms follow TRL's dataset formats ("standard" = plain strings,
"conversational" = lists of {"role", "content"} messages). Each reader turns every form it
accepts into ONE canonical record, the one the stages consume:

| reader           | accepted, one JSON object per line                  | canonical record                |
|------------------|-----------------------------------------------------|---------------------------------|
| read_texts       | {"text": str}                                       | the text                        |
| read_sft         | {"messages": [...]} ending with an assistant turn   | {"messages"}                    |
|                  | {"prompt": messages, "completion": messages}        | {"messages", "completion_start"}|
|                  | {"prompt": str, "completion": str}                  | {"text", "completion_start"}    |
|                  | {"text": str}                                       | {"text"}                        |
| read_preferences | {"prompt": messages or str, "chosen", "rejected"}   | {"prompt": messages,            |
|                  |   chosen/rejected: str or [one assistant message]   |  "chosen": str, "rejected": str}|
|                  | {"chosen": messages, "rejected": messages}          |   (same)                        |
|                  |   (implicit prompt: the shared first messages)      |                                 |
| read_rl          | {"prompt": messages or str, ...any other columns}   | {"prompt": messages, ...}       |
| read_labeled     | {"text": str, "label": int >= 0}  (linear probe)    | the record                      |

Where the SFT loss goes (formats.sft_tokens renders a canonical record):
  {"messages"}                      as --mask says (chat.py: prompt | template | none)
  {"messages", "completion_start"}  messages[completion_start:] are the completion; with the
                                    default "prompt" mask only the completion's assistant
                                    turns are trained, not the assistant turns of the prompt
                                    (TRL's completion-only loss); "template"/"none" as usual
  {"text", "completion_start"}      plain text, no chat template (TRL treats a string prompt
                                    as text): text[:completion_start] is the prompt, the rest
                                    the completion; loss on the completion and eos only
  {"text"}                          plain language modelling: loss on every token

A string prompt of a preference or RL record becomes [{"role": "user", "content": prompt}]; a
prompt given as messages must end with a user message (the model replies to it). The implicit
prompt of a preference pair is the messages the two conversations share before they first
differ; each must then go on with exactly one assistant message, the reply being compared.
RL records keep every other key ("answer", ...): those columns go to the reward functions
(minipost/reward_fns.py), which say what they need.

Blank lines are skipped and keys beyond the required ones (e.g. "meta") are kept in the
returned records. Bad input raises DataError (a ValueError) whose message names the file, the
line and what was expected, e.g.
    data/sft.jsonl, line 7: "messages"[2]: unknown role 'bot', expected one of system, user, assistant
Text that is not valid Unicode (a lone surrogate such as "\\ud800", which JSON can spell) is
refused there too: it could not be tokenized later, where no line number is known.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from minipost.chat import validate_messages

REPO_ROOT = Path(__file__).resolve().parent.parent
_SURROGATE = re.compile("[\ud800-\udfff]")


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
            except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; nesting too deep
                raise DataError(f"{path}, line {lineno}: not readable JSON ({type(e).__name__}: {e}); "
                                "expected one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object {{...}}, got {_kind(obj)}")
            bad = _lone_surrogate(obj)
            if bad is not None:
                raise DataError(f"{path}, line {lineno}: {bad}: text holds a lone surrogate (an unpaired "
                                "\\ud800-\\udfff escape), which is not valid Unicode; expected UTF-8 text")
            out.append((lineno, obj))
    if not out:
        raise DataError(f"{path}: the file is empty; expected at least one JSON object (one per line)")
    return out


def _lone_surrogate(obj) -> str | None:
    """Where in obj (e.g. "'messages'[1]['content']") a string or key holds a lone surrogate, else None.
    Iterative, so any nesting json.loads accepts is walked without recursion."""
    stack = [(obj, "the object")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where
        elif isinstance(value, dict):
            for k, v in value.items():
                if _SURROGATE.search(k):
                    return f"a key in {where}"
                stack.append((v, f"{k!r}" if where == "the object" else f"{where}[{k!r}]"))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
    return None


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
    """SFT records in any of the four forms of the module docstring -> canonical records:
    {"messages"} (the last message from the assistant: the turn being taught),
    {"messages", "completion_start"}, {"text", "completion_start"} or {"text"}; extra keys kept."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        if "messages" in obj:
            value = _field(obj, "messages", list, "a list of {'role', 'content'} messages", where)
            messages = _messages(value, "messages", where)
            _ends_with_assistant(messages, "the last message", where)
            out.append({**obj, "messages": messages})
        elif "prompt" in obj or "completion" in obj:
            out.append(_sft_prompt_completion(obj, where))
        elif "text" in obj:
            out.append({**obj, "text": _field(obj, "text", str, "a string", where)})
        else:
            raise DataError(f"{where}: expected one of the SFT forms {{'messages'}}, {{'prompt', 'completion'}} "
                            f"or {{'text'}}; keys present: {sorted(obj)}")
    return out


def _ends_with_assistant(messages: list[dict], what: str, where: str) -> None:
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: {what} must be from the assistant (the reply to learn), "
                        f"got {messages[-1]['role']!r}")


def _sft_prompt_completion(obj: dict, where: str) -> dict:
    """{"prompt", "completion"}, both strings or both messages -> a canonical SFT record."""
    expected = "a string, or a list of messages like 'prompt'"
    completion = _field(obj, "completion", (str, list), expected, where)
    prompt = _field(obj, "prompt", (str, list), "a string or a list of messages", where)
    rest = {k: v for k, v in obj.items() if k not in ("prompt", "completion")}
    if isinstance(prompt, str) != isinstance(completion, str):
        raise DataError(f"{where}: 'prompt' and 'completion' must both be strings (plain text) or both "
                        f"lists of messages (a conversation), got {_kind(prompt)} and {_kind(completion)}")
    if isinstance(prompt, str):
        return {**rest, "text": prompt + completion, "completion_start": len(prompt)}
    prompt = _prompt(obj, where)
    completion = _messages(completion, "completion", where)
    _ends_with_assistant(completion, "the last 'completion' message", where)
    return {**rest, "messages": prompt + completion, "completion_start": len(prompt)}


def read_preferences(path) -> list[dict]:
    """Preference pairs, explicit or implicit prompt (module docstring) -> canonical records
    {"prompt": messages ending with a user message, "chosen": str, "rejected": str}, extra keys kept."""
    out = []
    for n, obj in _records(path):
        where = _where(path, n)
        if "prompt" in obj:
            prompt = _prompt(obj, where)
            chosen, rejected = (_reply(obj, key, where) for key in ("chosen", "rejected"))
        else:
            prompt, chosen, rejected = _implicit_pair(obj, where)
        out.append({**obj, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def _reply(obj: dict, key: str, where: str) -> str:
    """A reply given as a string or as a list of exactly one assistant message -> its text."""
    value = _field(obj, key, (str, list), "a string, the assistant's reply, or a list of one assistant message",
                   where)
    if isinstance(value, str):
        return value
    return _one_assistant_message(_messages(value, key, where), key, where)


def _one_assistant_message(messages: list[dict], key: str, where: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise DataError(f"{where}: {key!r} must hold exactly one assistant message (the reply being compared), "
                        f"got {len(messages)} message(s) with roles: {roles}")
    return messages[0]["content"]


def _implicit_pair(obj: dict, where: str) -> tuple[list[dict], str, str]:
    """No "prompt": chosen and rejected are whole conversations; the prompt is the messages they
    share before the first one that differs, and each must go on with one assistant message."""
    expected = "a list of messages (a whole conversation: without 'prompt', the prompt is the shared start)"
    convs = [_messages(_field(obj, key, list, expected, where), key, where) for key in ("chosen", "rejected")]
    same = lambda a, b: (a["role"], a["content"]) == (b["role"], b["content"])  # noqa: E731
    split = next((i for i, (a, b) in enumerate(zip(*convs)) if not same(a, b)), min(map(len, convs)))
    prompt = convs[0][:split]
    if not prompt or prompt[-1]["role"] != "user":
        got = "no message" if not prompt else f"a {prompt[-1]['role']!r} message"
        raise DataError(f"{where}: 'chosen' and 'rejected' must share their first messages up to a user message "
                        f"and differ only in the assistant reply after it; the shared part ends with {got}")
    chosen, rejected = (_one_assistant_message(c[split:], key, where) for c, key in zip(convs, ("chosen", "rejected")))
    return prompt, chosen, rejected


def read_rl(path) -> list[dict]:
    """{"prompt": messages or str, ...other columns} per line -> {"prompt": messages, ...}.
    The other columns ("answer" for the built-in task) are kept for the reward functions."""
    return [{**obj, "prompt": _prompt(obj, _where(path, n))} for n, obj in _records(path)]


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


def read_general(path) -> list[dict]:
    """{"prompt": str, "answer": str, "kind": str} per line: general questions (data/general.py)."""
    out = []
    for n, obj in _records(path):
        for key in ("prompt", "answer", "kind"):
            _field(obj, key, str, "a string", _where(path, n))
        out.append(dict(obj))
    return out


def builtin(name: str, root: str | Path | None = None) -> Path:
    """Path of the built-in file data/minimart/{name}.jsonl (e.g. "sft_train").

    Names: {pretrain, cpt}_{train, val}, {sft, pref, rl, intent}_{train, val, test} and
    general_{val, test} (data/README.md). Settings are chosen on val; test is reported beside it.

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
