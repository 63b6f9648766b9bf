"""Tests for data/make_data.py: determinism, record formats (docs/DESIGN.md §5), held-out splits,
grounding of every answer in its order record (recomputed here from the prompt text), the voice
and fact judges on the SFT and preference data, RL totals and the CPT vocabulary split."""

import datetime as dt
import importlib.util
import itertools
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minipost.data import builtin
from minipost.rewards import extract_total, is_shop_voice, states_fact

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_data", ROOT / "data" / "make_data.py")
md = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md)  # which also puts data/ on sys.path, for the modules beside it
import corpus_cpt  # noqa: E402
import records  # noqa: E402
import world  # noqa: E402

SCALE = 0.1
SEED = 7
KINDS = ("pretrain", "cpt", "sft", "pref", "rl", "intent")
WITH_TEST = ("sft", "pref", "rl", "intent")  # the kinds with a test split


def splits_of(kind):
    return ("train", "val", "test") if kind in WITH_TEST else ("train", "val")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return md.generate(tmp_path_factory.mktemp("mm"), seed=SEED, scale=SCALE)


def load(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def tickets(recs):
    """The SFT tickets: without the long and FAQ conversations (meta "kind"), which only train has."""
    return [r for r in recs if "kind" not in r["meta"]]


@pytest.fixture(scope="module")
def data(files):
    return {k: load(p) for k, p in files.items() if p.suffix == ".jsonl"}


# ----------------------------------------------------------------------------- parsing the prompt

RECORD = re.compile(r"Order #(\d+)\nStatus: (.+)\nCarrier: (.+)\nTracking: (\S+)\n"
                    r"Delivery date: (.+)\nReturn by: (.+)\nItems:\n((?:\d+ x .+ at \$\d+(?:\n|$))+)")
ITEM = re.compile(r"^(\d+) x (.+) at \$(\d+)$", re.M)


def parse_record(text):
    m = RECORD.search(text)
    assert m, f"no order record in {text!r}"
    items = [(int(q), name, int(p)) for q, name, p in ITEM.findall(m.group(7))]
    return {"number": m.group(1), "status": m.group(2), "carrier": m.group(3), "tracking": m.group(4),
            "delivery": m.group(5), "return_by": m.group(6), "items": items}


def parse_date(s, year):
    month, day = s.split()
    return dt.date(year, MONTHS.index(month) + 1, int(day))


def expected_fact(intent, rec, question):
    """The fact a correct answer must state, recomputed from the record text alone."""
    if intent in ("delivery_date", "status", "carrier", "tracking"):
        return rec[{"delivery_date": "delivery"}.get(intent, intent)]
    if intent == "return_deadline":
        return rec["return_by"]
    if intent == "item_count":
        n = sum(q for q, _, _ in rec["items"])
        return f"{n} item" + ("s" if n != 1 else "")
    if intent == "total":
        return f"Total: ${sum(q * p for q, _, p in rec['items'])}"
    if intent == "item_price":
        named = [it for it in rec["items"] if it[1] in question]
        named.sort(key=lambda it: -len(it[1]))
        assert named, f"no item of the record is named in {question!r}"
        return f"${named[0][2]}"
    raise AssertionError(intent)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_and_different_seed_differs(files, tmp_path):
    again = md.generate(tmp_path / "a", seed=SEED, scale=SCALE)
    other = md.generate(tmp_path / "b", seed=SEED + 1, scale=SCALE)
    assert set(again) == set(files)
    for name, path in files.items():
        assert again[name].read_bytes() == path.read_bytes(), name
        fixed = name == "intent_labels" or name.startswith("general_")  # the same for every seed
        assert (other[name].read_bytes() == path.read_bytes()) == fixed, name


def test_rl_flags_change_only_rl_files(files, tmp_path):
    hard = md.generate(tmp_path, seed=SEED, scale=SCALE, rl_items=(4,), rl_max_price=5, rl_max_qty=3)
    for name, path in files.items():
        same = hard[name].read_bytes() == path.read_bytes()
        changes = name == "manifest" or (name.startswith("rl_") and not name.startswith("rl_sum_"))
        assert same == (not changes), name
    for rec in load(hard["rl_train"]) + load(hard["rl_val"]) + load(hard["rl_test"]):
        items = parse_record(rec["prompt"][-1]["content"])["items"]
        assert len(items) == 4
        assert all(1 <= p <= 5 and 1 <= q <= 3 for q, _, p in items)
        assert int(rec["answer"]) == sum(q * p for q, _, p in items)


# ----------------------------------------------------------------------------- files and formats

def test_names_sizes_and_encoding(files, data):
    expected = {f"{k}_{s}" for k in KINDS for s in splits_of(k)} | {f"rl_sum_{s}" for s in splits_of("rl")}
    assert set(files) == expected | {"general_val", "general_test", "general_replay", "intent_labels", "manifest"}
    for kind in KINDS:
        for i, split in enumerate(splits_of(kind)):
            target = max(1, round(md.SIZES[kind][i] * SCALE))
            if kind in ("pretrain", "cpt"):  # byte targets: reached, overshot by at most one document
                size = files[f"{kind}_{split}"].stat().st_size
                longest = max(len(json.dumps(r)) + 1 for r in data[f"{kind}_{split}"])
                assert target <= size < target + longest
            else:
                extra = sum(max(1, round(md.SIZES[k][0] * SCALE)) for k in ("sft_long", "sft_faq"))
                assert len(data[f"{kind}_{split}"]) == target + (extra if f"{kind}_{split}" == "sft_train" else 0)
                if kind == "rl":
                    assert len(data[f"rl_sum_{split}"]) == target
    for path in files.values():
        raw = path.read_bytes()
        assert all(b < 128 for b in raw), f"{path.name} is not ASCII"
        assert b"\r" not in raw and raw.endswith(b"\n")
    assert json.loads(files["intent_labels"].read_text()) == records.INTENTS
    manifest = json.loads(files["manifest"].read_text())
    assert manifest["args"] == {"seed": SEED, "rl_items": [1], "rl_max_price": 9, "rl_max_qty": 4,
                                "scale": SCALE}
    for name, info in manifest["files"].items():
        assert files[name].name == info["file"] and files[name].stat().st_size == info["bytes"]


def _check_messages(msgs, last_role):
    assert isinstance(msgs, list) and msgs
    assert msgs[0] == {"role": "system", "content": records.SYSTEM_PROMPT}
    for i, m in enumerate(msgs[1:]):
        assert set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
        assert m["role"] == ("user" if i % 2 == 0 else "assistant")
    assert msgs[-1]["role"] == last_role


def test_record_keys_and_types(data):
    for split in ("train", "val", "test"):
        for kind in ("pretrain", "cpt") if split != "test" else ():
            for r in data[f"{kind}_{split}"]:
                assert set(r) == {"text"} and isinstance(r["text"], str) and r["text"].strip()
        for r in tickets(data[f"sft_{split}"]):
            assert set(r) == {"messages", "meta"}
            _check_messages(r["messages"], "assistant")
            meta = r["meta"]
            assert set(meta) == {"intent", "fact", "voice", "turns", "intents", "facts"}
            assert meta["voice"] in records.VOICES and meta["intent"] in records.SFT_INTENTS
            assert isinstance(meta["fact"], str) and meta["fact"] == meta["facts"][-1]
            assert meta["turns"] == len(meta["facts"]) == len(meta["intents"]) == (len(r["messages"]) - 1) // 2
        for r in data[f"pref_{split}"]:
            assert set(r) == {"prompt", "chosen", "rejected", "meta"}
            _check_messages(r["prompt"], "user")
            assert len(r["prompt"]) == 2
            assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str) and r["chosen"] != r["rejected"]
            assert set(r["meta"]) == {"fact", "kind", "intent"} and r["meta"]["kind"] in ("voice", "hallucination")
        for r in data[f"rl_{split}"] + data[f"rl_sum_{split}"]:
            assert set(r) == {"prompt", "answer"}
            _check_messages(r["prompt"], "user")
            assert isinstance(r["answer"], str) and r["answer"].isdigit()
        for r in data[f"intent_{split}"]:
            assert set(r) == {"text", "label"} and isinstance(r["text"], str)
            assert type(r["label"]) is int and 0 <= r["label"] < len(records.INTENTS)


def _prompt_key(kind, r):
    if kind in ("pretrain", "cpt", "intent"):
        return r["text"]
    msgs = r["messages"][:2] if kind == "sft" else r["prompt"]
    return json.dumps(msgs)


@pytest.mark.parametrize("kind", KINDS)
def test_val_and_test_are_held_out(data, kind):
    """No prompt (or text) repeats within a split or across train, val and test."""
    keys = {split: [_prompt_key(kind, r) for r in data[f"{kind}_{split}"]] for split in splits_of(kind)}
    faq = {split: [r for r in data[f"{kind}_{split}"] if r.get("meta", {}).get("kind") == "faq"] for split in keys}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks), split
    for a, b in itertools.combinations(keys, 2):
        assert not set(keys[a]) & set(keys[b]), (a, b)
    if kind in ("sft", "pref", "rl"):  # different orders, not just different wording
        def num(r):
            return parse_record((r["messages"] if kind == "sft" else r["prompt"])[1]["content"])["number"]
        numbers = {split: {num(r) for r in data[f"{kind}_{split}"] if r not in faq[split]} for split in keys}
        for a, b in itertools.combinations(numbers, 2):
            assert not numbers[a] & numbers[b], (a, b)


# ----------------------------------------------------------------------------- SFT

def test_sft_answers_are_grounded_in_the_record(data):
    for r in data["sft_train"] + data["sft_val"] + data["sft_test"]:
        msgs, meta = r["messages"], r["meta"]
        if meta.get("kind") == "faq":  # no order record (tests/data/test_conversations.py)
            continue
        rec = parse_record(msgs[1]["content"])
        for t in range(meta["turns"]):
            question = msgs[1 + 2 * t]["content"].split("\n")[-1]
            answer = msgs[2 + 2 * t]["content"]
            fact = meta["facts"][t]
            assert fact == expected_fact(meta["intents"][t], rec, question)
            assert states_fact(answer, fact), (answer, fact)
            if meta["intents"][t] == "total":
                assert extract_total(answer) == int(fact.split("$")[1])
        # the return window is 30 days after delivery (the record crosses at most into next year)
        candidates = set()
        for year in (2024, 2025):
            try:  # February 29 exists in 2024 only
                candidates.add(world.fmt_date(parse_date(rec["delivery"], year) + dt.timedelta(days=30)))
            except ValueError:
                pass
        assert rec["return_by"] in candidates


def test_sft_voices(data):
    recs = data["sft_train"]
    for r in recs + data["sft_val"] + data["sft_test"]:
        for m in r["messages"][2::2]:
            assert is_shop_voice(m["content"]) == (r["meta"]["voice"] == "shop")
            if r["meta"]["voice"] != "shop":  # no other style borrows either phrase
                assert records.SHOP_OPENING.lower() not in m["content"].lower()
                assert "happy shopping" not in m["content"].lower()
    voices = Counter(r["meta"]["voice"] for r in recs)
    assert set(voices) == set(records.VOICES) and len(records.VOICES) >= 4
    assert 0.17 <= voices["shop"] / len(recs) <= 0.33


def test_sft_totals_two_turns_and_length(data):
    recs = tickets(data["sft_train"])
    totals = [r for r in recs if "total" in r["meta"]["intents"]]
    assert 0.15 <= len(totals) / len(recs) <= 0.28
    n_items = [len(parse_record(r["messages"][1]["content"])["items"]) for r in totals]
    assert set(n_items) == {1, 2}
    two = sum(r["meta"]["turns"] == 2 for r in recs)
    assert 0.05 <= two / len(recs) <= 0.16
    for r in recs + data["sft_val"] + data["sft_test"]:  # the tickets; the long ones are longer
        assert sum(len(m["content"].split()) for m in r["messages"]) <= 120
    assert {r["meta"]["intent"] for r in recs} == set(records.SFT_INTENTS)


# ----------------------------------------------------------------------------- preferences

def test_pref_chosen_and_rejected(data):
    kinds = Counter()
    for r in data["pref_train"] + data["pref_val"] + data["pref_test"]:
        fact, kind = r["meta"]["fact"], r["meta"]["kind"]
        kinds[kind] += 1
        user = r["prompt"][1]["content"]
        rec = parse_record(user)
        assert fact == expected_fact(r["meta"]["intent"], rec, user.split("\n")[-1])
        assert is_shop_voice(r["chosen"]) and states_fact(r["chosen"], fact)
        assert not (is_shop_voice(r["rejected"]) and states_fact(r["rejected"], fact))
        if kind == "voice":
            assert not is_shop_voice(r["rejected"]) and states_fact(r["rejected"], fact)
        else:
            assert is_shop_voice(r["rejected"]) and not states_fact(r["rejected"], fact)
            # same reply with one value swapped; the swapped-in value is nowhere in the record
            head, tail = r["chosen"].split(fact, 1)
            assert r["rejected"].startswith(head) and r["rejected"].endswith(tail)
            wrong = r["rejected"][len(head):len(r["rejected"]) - len(tail)]
            values = {rec[k] for k in ("status", "carrier", "tracking", "delivery", "return_by")}
            values |= {f"${p}" for _, _, p in rec["items"]}
            values |= {expected_fact(i, rec, "") for i in ("item_count", "total")}
            assert wrong and wrong != fact and wrong not in values, (wrong, user)
    assert min(kinds.values()) >= 0.3 * sum(kinds.values())


# ----------------------------------------------------------------------------- RL

def test_rl_answers_recomputed_from_prompt(data):
    sizes, quantities = Counter(), Counter()
    for r in data["rl_train"] + data["rl_val"] + data["rl_test"]:
        items = parse_record(r["prompt"][1]["content"])["items"]
        sizes[len(items)] += 1
        quantities.update(q for q, _, _ in items)
        assert all(1 <= q <= 4 and 1 <= p <= 9 for q, _, p in items)  # default flags
        assert int(r["answer"]) == sum(q * p for q, _, p in items)
        assert r["prompt"][1]["content"].split("\n")[-1] in records.QUESTIONS["total"]
    assert set(sizes) == {1} and set(quantities) == {1, 2, 3, 4}


def test_rl_sum_answers_are_two_prices_added(files, data, tmp_path):
    prices = Counter()
    for r in data["rl_sum_train"] + data["rl_sum_val"] + data["rl_sum_test"]:
        items = parse_record(r["prompt"][1]["content"])["items"]
        assert len(items) == 2 and all(q == 1 and 1 <= p <= 9 for q, _, p in items)
        assert int(r["answer"]) == items[0][2] + items[1][2]
        prices.update(p for _, _, p in items)
    assert set(prices) == set(range(1, 10))
    # the rl_* files of --rl-items 2 --rl-max-qty 1, byte for byte (same seed, same draws)
    flagged = md.generate(tmp_path, seed=SEED, scale=SCALE, rl_items=(2,), rl_max_qty=1)
    assert all(flagged[f"rl_{s}"].read_bytes() == files[f"rl_sum_{s}"].read_bytes() for s in ("train", "val", "test"))


# ----------------------------------------------------------------------------- corpora and intents

def test_cpt_vocabulary_only_in_cpt(data):
    general = "\n".join(r["text"] for r in data["pretrain_train"] + data["pretrain_val"]).lower()
    domain = "\n".join(r["text"] for r in data["cpt_train"]).lower()
    for term in corpus_cpt.CPT_TERMS:
        assert term not in general, term
        assert term in domain, term
    others = "\n".join(json.dumps(r) for k in ("sft", "pref", "rl", "intent")
                       for s in splits_of(k) for r in data[f"{k}_{s}"]).lower()
    assert not [t for t in corpus_cpt.CPT_TERMS if t in others]
    # the shop's voice is taught by SFT and preferences, never by the base corpus
    assert "hi there!" not in general and "happy shopping" not in general


def test_pretrain_receipts_add_up(data):
    receipts = [r["text"] for r in data["pretrain_train"] if "\nTotal: $" in r["text"]]
    assert len(receipts) > 10
    for text in receipts:
        lines = re.findall(r"^(\d+) x .+ at \$(\d+) = \$(\d+)$", text, re.M)
        assert lines and all(int(q) * int(p) == int(s) for q, p, s in lines)
        assert extract_total(text) == sum(int(s) for _, _, s in lines)


def test_intents_cover_all_labels(data):
    labels = Counter(r["label"] for r in data["intent_train"])
    assert set(labels) == set(range(len(records.INTENTS)))
    assert min(labels.values()) >= 0.1 * len(data["intent_train"])
    assert all("Order #" not in r["text"] and len(r["text"].split()) <= 30 for r in data["intent_train"])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n_items=st.integers(1, 5), max_price=st.integers(1, 50),
       max_qty=st.integers(1, 4))
def test_any_seed_and_flags_give_consistent_rl_and_sft(tmp_path_factory, seed, n_items, max_price, max_qty):
    out = md.generate(tmp_path_factory.mktemp("any"), seed=seed, scale=0.01, rl_items=(n_items,),
                      rl_max_price=max_price, rl_max_qty=max_qty)
    for r in load(out["rl_train"]) + load(out["rl_val"]):
        items = parse_record(r["prompt"][1]["content"])["items"]
        assert len(items) == n_items and all(1 <= p <= max_price and 1 <= q <= max_qty for q, _, p in items)
        assert int(r["answer"]) == sum(q * p for q, _, p in items)
    for r in tickets(load(out["sft_train"])):
        rec = parse_record(r["messages"][1]["content"])
        q = r["messages"][-2]["content"].split("\n")[-1]
        assert r["meta"]["fact"] == expected_fact(r["meta"]["intent"], rec, q)
        assert states_fact(r["messages"][-1]["content"], r["meta"]["fact"])


def test_cli_prints_one_line_per_file(tmp_path, capsys):
    md.main(["--out", str(tmp_path), "--scale", "0.01", "--seed", "3", "--rl-items", "2,3"])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 23  # 5 kinds x 3 splits, 2 corpora x 2, general val + test + replay, intent_labels
    assert all(re.match(r"^\S+\.jsonl?: \d+ (records|labels), \d+ bytes$", l) for l in lines)
    assert len(list(tmp_path.iterdir())) == 25  # 23 data files, manifest, GENERATOR_SHA256


def test_generated_data_is_current_for_builtin(tmp_path, capsys):
    """generate() stamps its files with the fingerprint builtin() checks: data made by
    `python data/make_data.py` is not made again."""
    (tmp_path / "data").mkdir()
    for source in (ROOT / "data").glob("*.py"):
        shutil.copy(source, tmp_path / "data" / source.name)
    out = md.generate(tmp_path / "data" / "minimart", seed=SEED, scale=0.01)
    assert (tmp_path / "data" / "minimart" / "GENERATOR_SHA256").read_text() == md.generator_sha256() + "\n"
    assert md.generator_sha256(tmp_path / "data") == md.generator_sha256()
    assert builtin("sft_train", root=tmp_path) == out["sft_train"]
    assert capsys.readouterr().out == ""  # not regenerated
    (tmp_path / "data" / "records.py").write_text((ROOT / "data" / "records.py").read_text() + "# changed\n")
    assert md.generator_sha256(tmp_path / "data") != md.generator_sha256()
