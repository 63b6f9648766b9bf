"""minipost.data: each reader on good input, and one clear error per kind of bad input."""
import json
import re

import pytest

from minipost.data import DataError, builtin, read_labeled, read_preferences, read_rl, read_sft, read_texts

USER = {"role": "user", "content": "Where is order 12?"}
ASSISTANT = {"role": "assistant", "content": "It ships today."}


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def assert_error(reader, path, line, expected):
    """The reader raises DataError naming the file, the line and what was expected."""
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message
    if line is not None:
        assert f"line {line}:" in message
    assert re.search(expected, message), message
    assert isinstance(info.value, ValueError)


# ---- good input ------------------------------------------------------------------------------

def test_read_texts_skips_blank_lines(tmp_path):
    path = write(tmp_path, [{"text": "one"}, "", "   ", {"text": "two", "meta": 1}])
    assert read_texts(path) == ["one", "two"]


def test_read_sft_keeps_extra_keys(tmp_path):
    rec = {"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT], "meta": {"agent": 3}}
    path = write(tmp_path, [rec, "", {"messages": [USER, ASSISTANT, USER, ASSISTANT]}])
    out = read_sft(path)
    assert out == [rec, {"messages": [USER, ASSISTANT, USER, ASSISTANT]}]


def test_read_preferences_normalizes_string_prompt(tmp_path):
    path = write(tmp_path, [
        {"prompt": "Where is order 12?", "chosen": "a", "rejected": "b", "meta": "x"},
        {"prompt": [{"role": "system", "content": "s"}, USER], "chosen": "c", "rejected": "d"},
    ])
    assert read_preferences(path) == [
        {"prompt": [USER], "chosen": "a", "rejected": "b", "meta": "x"},
        {"prompt": [{"role": "system", "content": "s"}, USER], "chosen": "c", "rejected": "d"},
    ]


def test_read_rl(tmp_path):
    path = write(tmp_path, [{"prompt": "Where is order 12?", "answer": "42"}, {"prompt": [USER], "answer": "7", "k": 1}])
    assert read_rl(path) == [{"prompt": [USER], "answer": "42"}, {"prompt": [USER], "answer": "7", "k": 1}]


def test_read_labeled(tmp_path):
    path = write(tmp_path, [{"text": "refund please", "label": 2}, {"text": "hi", "label": 0, "meta": None}])
    assert read_labeled(path) == [{"text": "refund please", "label": 2}, {"text": "hi", "label": 0, "meta": None}]


# ---- bad input: one test per case ------------------------------------------------------------

def test_bad_json(tmp_path):
    path = write(tmp_path, [{"text": "fine"}, "", '{"text": "broken"'])
    assert_error(read_texts, path, 3, "not valid JSON.*expected one JSON object per line")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert_error(read_texts, path, 2, "not UTF-8 text")


def test_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('{"text": "ok"}\n'.encode("utf-8-sig"))
    assert read_texts(path) == ["ok"]


def test_not_an_object(tmp_path):
    path = write(tmp_path, [["text", "x"]])
    assert_error(read_texts, path, 1, "expected a JSON object")


def test_missing_key(tmp_path):
    path = write(tmp_path, [{"text": "a"}, {"txt": "b"}])
    assert_error(read_texts, path, 2, r"missing key 'text' \(expected a string\)")


def test_wrong_type(tmp_path):
    path = write(tmp_path, [{"text": 5}])
    assert_error(read_texts, path, 1, "'text' must be a string, got an integer")


def test_unknown_role(tmp_path):
    path = write(tmp_path, [{"messages": [USER, ASSISTANT]}, {"messages": [USER, {"role": "bot", "content": "x"}]}])
    assert_error(read_sft, path, 2, r"unknown role 'bot', expected one of system, user, assistant")


def test_message_content_wrong_type(tmp_path):
    path = write(tmp_path, [{"messages": [USER, {"role": "assistant", "content": ["x"]}]}])
    assert_error(read_sft, path, 1, r"messages\[1\]: content must be a string, got list")


def test_messages_not_a_list(tmp_path):
    path = write(tmp_path, [{"messages": "hello"}])
    assert_error(read_sft, path, 1, "'messages' must be a list of")


def test_empty_file(tmp_path):
    path = write(tmp_path, [])
    assert_error(read_sft, path, None, "empty; expected at least one JSON object")


def test_blank_lines_only_is_empty(tmp_path):
    path = write(tmp_path, ["", "  "])
    assert_error(read_texts, path, None, "empty")


def test_missing_file(tmp_path):
    assert_error(read_texts, tmp_path / "nope.jsonl", None, "no such file")


def test_sft_last_message_not_assistant(tmp_path):
    path = write(tmp_path, [{"messages": [USER, ASSISTANT, USER]}])
    assert_error(read_sft, path, 1, "last message must be from the assistant.*got 'user'")


def test_sft_no_assistant_message(tmp_path):
    path = write(tmp_path, [{"messages": [{"role": "system", "content": "s"}, USER]}])
    assert_error(read_sft, path, 1, "last message must be from the assistant")


def test_sft_empty_messages(tmp_path):
    path = write(tmp_path, [{"messages": []}])
    assert_error(read_sft, path, 1, "at least one message")


def test_preferences_missing_rejected(tmp_path):
    path = write(tmp_path, [{"prompt": "q", "chosen": "a"}])
    assert_error(read_preferences, path, 1, "missing key 'rejected'")


def test_preferences_prompt_wrong_type(tmp_path):
    path = write(tmp_path, [{"prompt": 3, "chosen": "a", "rejected": "b"}])
    assert_error(read_preferences, path, 1, "'prompt' must be a string or a list of messages")


def test_preferences_prompt_ends_with_assistant(tmp_path):
    path = write(tmp_path, [{"prompt": [USER, ASSISTANT], "chosen": "a", "rejected": "b"}])
    assert_error(read_preferences, path, 1, "last 'prompt' message must be from the user")


def test_rl_answer_is_a_column_not_checked_by_the_reader(tmp_path):
    # The reward functions check their columns (reward_fns.minimart_task_reward needs "answer").
    path = write(tmp_path, [{"prompt": "what is 2+2?", "answer": 4}, {"prompt": "hi"}])
    assert read_rl(path) == [{"prompt": [{"role": "user", "content": "what is 2+2?"}], "answer": 4},
                             {"prompt": [{"role": "user", "content": "hi"}]}]


def test_rl_prompt_unknown_role(tmp_path):
    path = write(tmp_path, [{"prompt": [{"role": "human", "content": "hi"}], "answer": "4"}])
    assert_error(read_rl, path, 1, r"'prompt': messages\[0\]: unknown role 'human'")


def test_labeled_negative_label(tmp_path):
    path = write(tmp_path, [{"text": "a", "label": -1}])
    assert_error(read_labeled, path, 1, "'label' must be an integer class index >= 0, got -1")


def test_labeled_bool_label(tmp_path):
    path = write(tmp_path, [{"text": "a", "label": True}])
    assert_error(read_labeled, path, 1, "'label' must be an integer class index >= 0, got a boolean")


def test_labeled_float_label(tmp_path):
    path = write(tmp_path, [{"text": "a", "label": 1.0}])
    assert_error(read_labeled, path, 1, "got a number")


# ---- builtin() ---------------------------------------------------------------------------------

def test_builtin_missing_generator(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"generator .*make_data\.py was not found"):
        builtin("sft_train", root=tmp_path)


def test_builtin_existing_file_is_returned(tmp_path, capsys):
    (tmp_path / "data" / "minimart").mkdir(parents=True)
    path = tmp_path / "data" / "minimart" / "sft_train.jsonl"
    path.write_text('{"messages": []}\n')
    assert builtin("sft_train", root=tmp_path) == path
    assert capsys.readouterr().out == ""


FAKE_GENERATOR = '''
from pathlib import Path
CALLS = []

def generate(out_dir, seed=1234):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pretrain_train.jsonl").write_text('{"text": "hello"}\\n')
    (out_dir / "calls.txt").write_text(str(seed))
    return {"pretrain_train": out_dir / "pretrain_train.jsonl"}
'''


def test_builtin_generates_on_first_use(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "make_data.py").write_text(FAKE_GENERATOR)
    path = builtin("pretrain_train", root=tmp_path)
    assert path == tmp_path / "data" / "minimart" / "pretrain_train.jsonl"
    assert read_texts(path) == ["hello"]
    assert (tmp_path / "data" / "minimart" / "calls.txt").read_text() == "1234"  # default seed
    assert "generating" in capsys.readouterr().out
    # Second use: no regeneration.
    (tmp_path / "data" / "minimart" / "calls.txt").unlink()
    assert builtin("pretrain_train", root=tmp_path) == path
    assert not (tmp_path / "data" / "minimart" / "calls.txt").exists()


def test_builtin_rebuilds_when_generator_changes(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    generator = tmp_path / "data" / "make_data.py"
    generator.write_text(FAKE_GENERATOR)
    path = builtin("pretrain_train", root=tmp_path)
    calls = tmp_path / "data" / "minimart" / "calls.txt"
    calls.unlink()
    generator.write_text(FAKE_GENERATOR + "\n# a newer version\n")
    capsys.readouterr()
    assert builtin("pretrain_train", root=tmp_path) == path
    assert calls.exists()  # regenerated
    assert "older generator" in capsys.readouterr().out


def test_builtin_rebuilds_when_a_generator_module_changes(tmp_path, capsys):
    # make_data.py imports the modules beside it (world.py, records.py, ...): they count too.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "make_data.py").write_text(FAKE_GENERATOR)
    module = tmp_path / "data" / "world.py"
    module.write_text("PRICE = 1\n")
    path = builtin("pretrain_train", root=tmp_path)
    calls = tmp_path / "data" / "minimart" / "calls.txt"
    calls.unlink()
    (tmp_path / "data" / "README.md").write_text("not part of the generator\n")
    assert builtin("pretrain_train", root=tmp_path) == path
    assert not calls.exists()  # only .py files count
    module.write_text("PRICE = 2\n")
    capsys.readouterr()
    assert builtin("pretrain_train", root=tmp_path) == path
    assert calls.exists()  # regenerated
    assert "older generator" in capsys.readouterr().out


def test_builtin_unknown_name(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "make_data.py").write_text(FAKE_GENERATOR)
    with pytest.raises(FileNotFoundError, match="no built-in data named 'sft_tran'; available: pretrain_train"):
        builtin("sft_tran", root=tmp_path)


def test_builtin_rejects_paths(tmp_path):
    with pytest.raises(ValueError, match="plain file stem"):
        builtin("../secrets", root=tmp_path)
