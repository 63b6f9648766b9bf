"""minipost.data: the TRL record forms of each reader, their errors, and hypothesis properties
(any JSON line either loads or raises DataError naming the file and line)."""
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minipost.data import DataError, read_labeled, read_preferences, read_rl, read_sft, read_texts
from tests.test_data import ASSISTANT, USER, write

SYS = {"role": "system", "content": "Be brief."}
USER2 = {"role": "user", "content": "And order 13?"}
GOOD = {"role": "assistant", "content": "Order 13 shipped."}
BAD = {"role": "assistant", "content": "No idea."}


def assert_error(reader, path, line, expected):
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}:"), message
    assert re.search(expected, message), message


# ---- SFT ---------------------------------------------------------------------------------------

def test_sft_prompt_completion_messages(tmp_path):
    rec = {"prompt": [SYS, USER, ASSISTANT, USER2], "completion": [GOOD], "meta": 1}
    out = read_sft(write(tmp_path, [rec]))
    assert out == [{"meta": 1, "messages": [SYS, USER, ASSISTANT, USER2, GOOD], "completion_start": 4}]


def test_sft_prompt_completion_strings(tmp_path):
    out = read_sft(write(tmp_path, [{"prompt": "The sky is", "completion": " blue."}]))
    assert out == [{"text": "The sky is blue.", "completion_start": 10}]


def test_sft_prompt_completion_string_prompt_only_with_strings(tmp_path):
    path = write(tmp_path, [{"prompt": "The sky is", "completion": [GOOD]}])
    assert_error(read_sft, path, 1, "must both be strings .* or both lists of messages.*a string and a list")


def test_sft_text(tmp_path):
    assert read_sft(write(tmp_path, [{"text": "plain words", "k": 2}])) == [{"text": "plain words", "k": 2}]


def test_sft_messages_unchanged(tmp_path):
    rec = {"messages": [SYS, USER, ASSISTANT], "meta": {"agent": 3}}
    assert read_sft(write(tmp_path, [rec])) == [rec]


@pytest.mark.parametrize("record, expected", [
    ({"msgs": []}, r"expected one of the SFT forms .*keys present: \['msgs'\]"),
    ({"prompt": [USER]}, "missing key 'completion'"),
    ({"completion": [GOOD]}, "missing key 'prompt'"),
    ({"prompt": [USER], "completion": [USER2]}, "last 'completion' message must be from the assistant"),
    ({"prompt": [USER, ASSISTANT], "completion": [GOOD]}, "last 'prompt' message must be from the user"),
    ({"prompt": [USER], "completion": []}, "'completion': messages must contain at least one message"),
    ({"prompt": [USER], "completion": 3}, "'completion' must be a string, or a list of messages"),
    ({"prompt": "x", "completion": None}, "'completion' must be a string, or a list of messages like 'prompt', got null"),
    ({"text": ["a"]}, "'text' must be a string, got a list"),
    ({"prompt": [USER], "completion": [{"role": "assistant", "content": 5}]}, r"messages\[0\]: content must be"),
])
def test_sft_malformed(tmp_path, record, expected):
    path = write(tmp_path, [{"text": "fine"}, record])
    assert_error(read_sft, path, 2, expected)


# ---- preferences -------------------------------------------------------------------------------

def test_pref_explicit_message_replies(tmp_path):
    rec = {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "meta": "x"}
    assert read_preferences(write(tmp_path, [rec])) == [
        {"prompt": [USER], "chosen": GOOD["content"], "rejected": BAD["content"], "meta": "x"}]


def test_pref_explicit_string_prompt_message_replies(tmp_path):
    rec = {"prompt": "Where is order 12?", "chosen": [GOOD], "rejected": "No idea."}
    assert read_preferences(write(tmp_path, [rec])) == [
        {"prompt": [USER], "chosen": GOOD["content"], "rejected": "No idea."}]


def test_pref_implicit_prompt(tmp_path):
    shared = [SYS, USER, ASSISTANT, USER2]
    rec = {"chosen": shared + [GOOD], "rejected": shared + [BAD], "id": 7}
    assert read_preferences(write(tmp_path, [rec])) == [
        {"chosen": GOOD["content"], "rejected": BAD["content"], "id": 7, "prompt": shared}]


@pytest.mark.parametrize("record, expected", [
    ({"chosen": [USER, GOOD], "rejected": [USER, GOOD]}, "the shared part ends with a 'assistant' message"),
    ({"chosen": [USER, GOOD], "rejected": [USER2, BAD]}, "the shared part ends with no message"),
    ({"chosen": [USER, ASSISTANT, USER, GOOD], "rejected": [USER, BAD, USER, GOOD]},
     "the shared part ends with a 'user' message|exactly one assistant message"),
    ({"chosen": [USER, GOOD, USER2], "rejected": [USER, BAD]}, r"'chosen' must hold exactly one assistant message"
                                                                r".*2 message\(s\) with roles: assistant, user"),
    ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "'chosen' must be a list of messages"),
    ({"chosen": [USER, GOOD]}, "missing key 'rejected'"),
    ({"prompt": [USER], "chosen": [GOOD, GOOD], "rejected": "b"}, "'chosen' must hold exactly one assistant"),
    ({"prompt": [USER], "chosen": [USER2], "rejected": "b"}, "roles: user"),
    ({"prompt": [USER], "chosen": "a", "rejected": 4}, "'rejected' must be a string, the assistant's reply, or"),
])
def test_pref_malformed(tmp_path, record, expected):
    path = write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}, record])
    assert_error(read_preferences, path, 2, expected)


def test_pref_implicit_split_at_first_difference(tmp_path):
    # Differ at the first assistant turn although the last ones agree: the shared part is [USER].
    rec = {"chosen": [USER, GOOD], "rejected": [USER, BAD]}
    assert read_preferences(write(tmp_path, [rec]))[0]["prompt"] == [USER]


# ---- RL ----------------------------------------------------------------------------------------

def test_rl_any_columns(tmp_path):
    rows = [{"prompt": "Where is order 12?"}, {"prompt": [USER], "answer": 4, "solution": {"x": [1]}}]
    assert read_rl(write(tmp_path, rows)) == [{"prompt": [USER]},
                                              {"prompt": [USER], "answer": 4, "solution": {"x": [1]}}]


def test_rl_prompt_required(tmp_path):
    assert_error(read_rl, write(tmp_path, [{"prompt": "a"}, {"answer": "4"}]), 2, "missing key 'prompt'")


# ---- lines that are not valid text -------------------------------------------------------------

def test_lone_surrogate_is_refused(tmp_path):
    path = write(tmp_path, [{"text": "ok"}, json.dumps({"messages": [USER, {"role": "assistant", "content": "a\ud800b"}]})])
    assert_error(read_sft, path, 2, r"'messages'\[1\]\['content'\]: text holds a lone surrogate")


def test_lone_surrogate_in_a_key(tmp_path):
    path = write(tmp_path, ['{"text": "ok", "\\udc00": 1}'])
    assert_error(read_texts, path, 1, "a key in the object: text holds a lone surrogate")


def test_huge_integer_and_deep_nesting(tmp_path):
    assert_error(read_rl, write(tmp_path, ['{"prompt": "a", "n": ' + "9" * 5000 + "}"]), 1, "not readable JSON")
    assert_error(read_rl, write(tmp_path, ['{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"]), 1,
                 "not readable JSON|'prompt'")


# ---- properties: any JSON line loads or raises DataError with file and line ---------------------

SURROGATES = st.sampled_from(["a\ud800b", "\udfff", "\ud83d", "x\udc00"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) | SURROGATES
           | st.sampled_from(["system", "user", "assistant", ""]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6) | SURROGATES, inner, max_size=4), max_leaves=20)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot"]),
                                 "content": st.text(max_size=5) | SURROGATES | JSON})
KEYS = ["text", "messages", "prompt", "completion", "chosen", "rejected", "answer", "label"]
# Objects that use the readers' own keys, with values that are often almost right.
NEAR = st.dictionaries(st.sampled_from(KEYS), st.lists(MESSAGE, max_size=4) | JSON, max_size=4)
LINE = st.one_of(
    NEAR.map(json.dumps),
    JSON.map(json.dumps),
    NEAR.map(lambda o: json.dumps(o, ensure_ascii=False)),  # raw non-ASCII text, surrogates as raw code points
    st.text(max_size=30),  # not JSON at all
    st.integers(4000, 5000).map(lambda n: '{"prompt": "q", "text": ' + "7" * n + "}"),  # past int's 4300 digits
)
# Each reader with one good line, so that a bad line 2 must be the one named.
READERS = {read_texts: {"text": "a"}, read_sft: {"text": "a"}, read_preferences: {"prompt": "q", "chosen": "c",
           "rejected": "r"}, read_rl: {"prompt": "q"}, read_labeled: {"text": "a", "label": 0}}


@pytest.mark.parametrize("reader", list(READERS), ids=lambda r: r.__name__)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(line=LINE)
def test_any_line_loads_or_names_file_and_line(tmp_path, reader, line):
    path = tmp_path / "prop.jsonl"
    # Lone surrogates cannot be UTF-8: written as surrogatepass bytes they make invalid UTF-8.
    path.write_bytes(json.dumps(READERS[reader]).encode() + b"\n" + line.replace("\n", " ").encode("utf-8", "surrogatepass") + b"\n")
    try:
        out = reader(path)
    except DataError as e:
        assert str(e).startswith(f"{path}, line 2: "), str(e)
        return
    assert len(out) in (1, 2)
