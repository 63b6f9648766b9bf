"""Generate the built-in "Minimart" data set of minipost (see data/README.md).

Minimart is a small fictional online shop. From a fixed seed this script builds its world
(products, prices, carriers, makers, customers, policies) and writes, into data/minimart/:

    pretrain_{train,val}.jsonl  {"text"}                      general shop English
    cpt_{train,val}.jsonl       {"text"}                      the new "Verdant" hydroponics line
    sft_{train,val,test}.jsonl      {"messages", "meta"}      support tickets, mixed reply styles
                                    (train also: long conversations and policy questions)
    pref_{train,val,test}.jsonl     {"prompt", "chosen", "rejected", "meta"}
    rl_{train,val,test}.jsonl       {"prompt", "answer"}      order totals, checked by rewards.py
    rl_sum_{train,val,test}.jsonl   {"prompt", "answer"}      the same for two-item sums (a real model's task)
    intent_{train,val,test}.jsonl   {"text", "label"}         + intent_labels.json
    general_{val,test}.jsonl        {"prompt", "answer", "kind"}   general questions (general.py)
    general_replay.jsonl            {"prompt"}                     replay prompts (general.py, replay.py)

This file draws the splits and writes them; what goes into a record is in the modules beside it:

    records.py          SFT tickets, preference pairs, RL tasks, intent messages (start here)
    conversations.py    multi-turn conversations and one-question policy chats (SFT train only)
    world.py            policies, the product catalogue, carriers, orders and the order record
    corpus_pretrain.py  the pretraining corpus: its mix and the documents about orders
    corpus_shop.py      pretraining documents about the catalogue and the shop
    corpus_cpt.py       the CPT corpus (the Verdant hydroponics line)
    general.py          general questions with short answers (the forgetting check)

Only the standard library is used. Every file draws from its own random.Random seeded with
"<seed>/<file kind>", so the same arguments always give the same bytes, and the RL flags
change only the RL files. Val records are never copies of train records.

The test split: settings are chosen on val and reported on test, which no choice has seen.
Its records are drawn after train and val, from the same generator and excluding every
record (and every order) drawn before, so adding it left the train and val files
byte-identical (tests/data/test_make_data.py keeps their SHA-256s).

    python data/make_data.py [--out DIR] [--seed N] [--rl-items 1] [--rl-max-price N]
                             [--rl-max-qty N] [--scale F]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, Python finds the modules beside this file; loaded from its path
# (minipost.data.builtin(), the tests) it has to be told where they are.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from corpus_cpt import cpt_doc  # noqa: E402
from conversations import faq_record, long_record  # noqa: E402
from corpus_pretrain import pretrain_doc  # noqa: E402
from general import general_questions, replay_prompts  # noqa: E402
from records import (INTENTS, RL_ITEMS, RL_MAX_PRICE, RL_MAX_QTY, RL_SUM_ITEMS, RL_SUM_MAX_PRICE,  # noqa: E402
                     RL_SUM_MAX_QTY, intent_record, pref_record, rl_record, sft_record)
from world import OrderMaker, build_world  # noqa: E402

DEFAULT_OUT = HERE / "minimart"  # git-ignored; made on first use

# Sizes at scale 1.0: bytes for text corpora, records for the rest.
SIZES = {
    "pretrain": (3_000_000, 100_000), "cpt": (1_000_000, 50_000),
    "sft": (4000, 200, 200), "pref": (2000, 200, 200), "rl": (2000, 200, 200), "intent": (2000, 400, 400),
    "sft_long": (600,), "sft_faq": (400,),  # train only, mixed into sft_train (conversations.py)
}
SPLITS = ("train", "val", "test")  # the text corpora have train and val only


def _key(rec: dict) -> str:
    """What must not repeat between (and within) splits: the text, or the prompt."""
    if "text" in rec:
        return rec["text"]
    msgs = rec["messages"][:-1] if "messages" in rec else rec["prompt"]
    return json.dumps(msgs)


def _split(make, *targets: int, by_bytes: bool = False):
    """Draw unique records (by _key) until each split reaches its count or byte size, in order
    (train, val[, test]): a later split never changes the draws of an earlier one."""
    seen: set[str] = set()
    out = []
    for target in targets:
        recs, size, tries = [], 0, 0
        while (size if by_bytes else len(recs)) < target:
            tries += 1
            if tries > 50 * target + 1000:
                raise RuntimeError("make_data: could not draw enough distinct records")
            rec = make()
            k = _key(rec)
            if k in seen:
                continue
            seen.add(k)
            recs.append(rec)
            size += len(json.dumps(rec, ensure_ascii=False)) + 1
        out.append(recs)
    return out


def _interleave(rng: random.Random, base: list, extra: list) -> list:
    """`extra` spread over random positions of `base`; each keeps its own order."""
    slots = set(rng.sample(range(len(base) + len(extra)), len(extra)))
    b, e = iter(base), iter(extra)
    return [next(e) if i in slots else next(b) for i in range(len(base) + len(extra))]


def _write_jsonl(path: Path, recs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def generator_sha256(data_dir: Path = HERE) -> str:
    """Fingerprint of the generator: every data/*.py file, by name and content, in name order.

    Kept beside the files as GENERATOR_SHA256; minipost.data.builtin() computes the same
    and rebuilds the data when any generator file has changed.
    """
    listing = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                      for p in sorted(Path(data_dir).glob("*.py")))
    return hashlib.sha256(listing.encode()).hexdigest()


def generate(out_dir, seed: int = 1234, rl_items=RL_ITEMS, rl_max_price: int = RL_MAX_PRICE, rl_max_qty: int = RL_MAX_QTY,
             scale: float = 1.0, verbose: bool = False) -> dict[str, Path]:
    """Write the Minimart files into `out_dir` and return {name: path}.

    Names: pretrain_train, pretrain_val, cpt_train, cpt_val, then {sft, pref, rl, rl_sum, intent}_
    {train, val, test}, general_val, general_test (JSONL), intent_labels (JSON list of label
    names) and manifest (JSON: the arguments and each file's size; written last).
    `scale` multiplies every size (bytes for pretrain/cpt, record counts otherwise; the
    general questions are a fixed set and do not scale).
    The RL flags set the task's difficulty: items per order drawn from `rl_items`, unit
    prices 1..rl_max_price dollars, quantities 1..rl_max_qty; the rl_sum files keep theirs.
    """
    rl_items = tuple(int(n) for n in rl_items)
    if not rl_items or min(rl_items) < 1 or rl_max_price < 1 or rl_max_qty < 1 or scale <= 0:
        raise ValueError("make_data: rl_items, rl_max_price, rl_max_qty and scale must be positive")
    world = build_world(seed)
    if max(rl_items) > len(world):
        raise ValueError(f"make_data: at most {len(world)} items per RL order")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def n(kind):
        return [max(1, round(size * scale)) for size in SIZES[kind]]

    def rng_for(kind):
        return random.Random(f"{seed}/{kind}")

    r = rng_for("pretrain")
    om = OrderMaker(r, world)
    splits = {"pretrain": _split(lambda: {"text": pretrain_doc(r, world, om)},
                                 *n("pretrain"), by_bytes=True)}
    r_c = rng_for("cpt")
    splits["cpt"] = _split(lambda: {"text": cpt_doc(r_c)}, *n("cpt"), by_bytes=True)
    r_s = rng_for("sft")
    om_s = OrderMaker(r_s, world)
    splits["sft"] = _split(lambda: sft_record(r_s, om_s), *n("sft"))
    # The long and short conversations (conversations.py) join the training tickets only, drawn
    # after every ticket from seeds of their own, so the tickets are the same bytes as before
    # they existed and the held-out splits stay tickets; their orders share the tickets' numbers
    # in use, so none is a held-out order.
    r_l = rng_for("sft_long")
    om_l = OrderMaker(r_l, world, used=om_s.used)
    (long_train,) = _split(lambda: long_record(r_l, om_l), *n("sft_long"))
    r_f = rng_for("sft_faq")
    (faq_train,) = _split(lambda: faq_record(r_f), *n("sft_faq"))
    splits["sft"][0] = _interleave(rng_for("sft_mix"), splits["sft"][0], long_train + faq_train)
    r_p = rng_for("pref")
    om_p = OrderMaker(r_p, world)
    splits["pref"] = _split(lambda: pref_record(r_p, om_p), *n("pref"))
    r_r = rng_for("rl")
    om_r = OrderMaker(r_r, world)
    splits["rl"] = _split(lambda: rl_record(r_r, om_r, rl_items, rl_max_price, rl_max_qty),
                          *n("rl"))
    # The sums task keeps its difficulty whatever the RL flags (records.RL_SUM_ITEMS). Drawn from
    # the RL seed, so its files are byte for byte the rl_* files of --rl-items 2 --rl-max-qty 1.
    r_q = rng_for("rl")
    om_q = OrderMaker(r_q, world)
    splits["rl_sum"] = _split(lambda: rl_record(r_q, om_q, RL_SUM_ITEMS, RL_SUM_MAX_PRICE, RL_SUM_MAX_QTY),
                              *n("rl"))
    r_i = rng_for("intent")
    splits["intent"] = _split(lambda: intent_record(r_i, world), *n("intent"))

    paths: dict[str, Path] = {}
    splits["general"] = {"val": general_questions("val"), "test": general_questions("test"),
                         "replay": replay_prompts()}
    for kind, drawn in splits.items():
        named = drawn.items() if isinstance(drawn, dict) else zip(SPLITS, drawn)
        for split, recs in named:
            p = out / f"{kind}_{split}.jsonl"
            _write_jsonl(p, recs)
            paths[f"{kind}_{split}"] = p
            if verbose:
                print(f"{p.name}: {len(recs)} records, {p.stat().st_size} bytes")
    p = out / "intent_labels.json"
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(INTENTS) + "\n")
    paths["intent_labels"] = p
    if verbose:
        print(f"{p.name}: {len(INTENTS)} labels, {p.stat().st_size} bytes")
    # Which generator made these files: minipost.data.builtin() rebuilds them when it changes.
    (out / "GENERATOR_SHA256").write_text(generator_sha256() + "\n")
    # Written last: its presence means a complete set of files made with these arguments.
    manifest = {"args": _args(seed, rl_items, rl_max_price, rl_max_qty, scale),
                "files": {name: {"file": q.name, "bytes": q.stat().st_size} for name, q in paths.items()}}
    p = out / "manifest.json"
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    paths["manifest"] = p
    return paths


def _args(seed, rl_items, rl_max_price, rl_max_qty, scale) -> dict:
    return {"seed": int(seed), "rl_items": [int(n) for n in rl_items], "rl_max_price": int(rl_max_price),
            "rl_max_qty": int(rl_max_qty), "scale": float(scale)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Generate the Minimart data set (see data/README.md).")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rl-items", default=",".join(map(str, RL_ITEMS)), help="comma-separated item counts for RL orders")
    ap.add_argument("--rl-max-price", type=int, default=RL_MAX_PRICE)
    ap.add_argument("--rl-max-qty", type=int, default=RL_MAX_QTY)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args(argv)
    try:
        items = tuple(int(x) for x in a.rl_items.split(",") if x.strip())
    except ValueError:
        ap.error(f"--rl-items must be comma-separated integers, got {a.rl_items!r}")
    t0 = time.time()
    generate(a.out, seed=a.seed, rl_items=items, rl_max_price=a.rl_max_price, rl_max_qty=a.rl_max_qty,
             scale=a.scale, verbose=True)
    print(f"wrote {a.out} in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
