"""minipost/mixture.py: the token fraction of the joint CPT+SFT mixture, and its loss masks
after packing, token by token."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.chat import render_chat
from minipost.mixture import joint_cpt_sft, mix_documents, text_documents, trained_tokens
from minipost.packing import IGNORE_INDEX, pack

WORDS = "the order shipped kettle mug lamp arrives March Total price refund return shop".split()


def doc(n_trained, n_masked=0):
    """A document of n_masked prompt positions then n_trained trained ones."""
    ids = list(range(n_masked + n_trained))
    return ids, [IGNORE_INDEX] * n_masked + [7] * n_trained


def fraction(text_tokens, sft_tokens):
    return text_tokens / (text_tokens + sft_tokens)


def test_mix_by_hand():
    sft = [doc(10, 5), doc(20, 40)]                  # S = 30 trained tokens (the 45 prompt ones do not count)
    texts = [doc(4), doc(4), doc(4), doc(4), doc(4)]
    docs, stats = mix_documents(sft, texts, 0.25, seed=0)
    # T* = 0.25 * 30 / 0.75 = 10 -> three documents of 4 (12 >= 10 > 8)
    assert stats["text_docs"] == 3 and stats["text_tokens"] == 12 and stats["sft_tokens"] == 30
    assert stats["text_fraction"] == 12 / 42
    assert docs[:2] == sft and len(docs) == 5
    docs, stats = mix_documents(sft, texts, 0.0, seed=0)
    assert docs == sft and stats["text_tokens"] == 0
    # T* = 0.5 * 30 / 0.5 = 30 > 20 text tokens: a second pass over the text
    docs, stats = mix_documents(sft, texts, 0.5, seed=0)
    assert stats["text_tokens"] == 32 and stats["text_epochs"] == 2
    with pytest.raises(ValueError, match="fraction in"):
        mix_documents(sft, texts, 1.0, seed=0)
    with pytest.raises(ValueError, match="needs text documents"):
        mix_documents(sft, [], 0.1, seed=0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 30)), min_size=1, max_size=8),
       st.lists(st.integers(1, 50), min_size=1, max_size=10), st.floats(0.0, 0.9), st.integers(0, 99))
def test_realized_fraction_is_within_one_document_of_the_target(sft_shape, text_lengths, mix, seed):
    sft = [doc(t, m) for t, m in sft_shape]
    texts = [doc(n) for n in text_lengths]
    docs, stats = mix_documents(sft, texts, mix, seed)
    chosen = docs[len(sft):]
    S = sum(t for t, _ in sft_shape)
    T = sum(trained_tokens(d) for d in chosen)
    assert (stats["sft_tokens"], stats["text_tokens"]) == (S, T)
    assert docs[:len(sft)] == sft
    if not chosen:
        assert mix <= 1e-12                                              # F = 0 (up to float rounding)
    else:
        last = trained_tokens(chosen[-1])
        assert fraction(T - last, S) < mix <= fraction(T, S) + 1e-12   # F is reached by the last document
    # The same seed gives the same mixture.
    assert mix_documents(sft, texts, mix, seed) == (docs, stats)


def test_joint_mixture_masks_after_packing_token_by_token(small_tokenizer):
    tok = small_tokenizer
    rng = random.Random(0)
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    convs = [[{"role": "system", "content": "Be brief."},
              {"role": "user", "content": sentence(6)},
              {"role": "assistant", "content": sentence(5)}] for _ in range(6)]
    sft = [render_chat(m, tok, "prompt") for m in convs]
    texts = [sentence(60)] + [sentence(rng.randint(3, 40)) for _ in range(11)]
    seq_len = 48
    docs, stats = joint_cpt_sft(sft, texts, tok, 0.4, seq_len, seed=3)
    assert stats["text_docs"] > 0 and docs[:len(sft)] == sft
    all_text_docs = text_documents([tok.encode(t) for t in texts], tok.bos_id, tok.eos_id, seq_len)
    assert all(d in all_text_docs for d in docs[len(sft):])

    rows = pack(docs, seq_len, tok.pad_id)
    seen = {}
    for r in range(rows["input_ids"].shape[0]):
        for t in range(seq_len):
            i = rows["doc_index"][r, t].item()
            if i < 0:
                assert rows["targets"][r, t].item() == IGNORE_INDEX
                continue
            seen.setdefault(i, []).append((rows["input_ids"][r, t].item(), rows["targets"][r, t].item()))
    assert sorted(seen) == list(range(len(docs)))
    for i, pairs in seen.items():
        ids, targets = [p[0] for p in pairs], [p[1] for p in pairs]
        if i < len(sft):
            assert (ids, targets) == (list(sft[i][0]), list(sft[i][1]))     # exactly render_chat's mask
            assert any(t == IGNORE_INDEX for t in targets)
        else:
            assert all(t != IGNORE_INDEX for t in targets)                   # every text position trained
            assert targets[:-1] == ids[1:]                                   # the next token of the text
    # A whole text, in order: bos, the text, eos; its chunks' positions are each trained once.
    chunks = text_documents([tok.encode(texts[0])], tok.bos_id, tok.eos_id, seq_len)
    assert len(chunks) >= 2                                                  # the long text was split
    flat_ids = [x for c in chunks for x in c[0]]
    flat_targets = [x for c in chunks for x in c[1]]
    assert flat_ids == [tok.bos_id, *tok.encode(texts[0])]
    assert flat_targets == [*tok.encode(texts[0]), tok.eos_id]


def test_a_fraction_reached_exactly_stops_there():
    # S = 1, F = 0.9: T* = 9 (9.000000000000002 in floats); one document of 9 gives 9 / 10 = F.
    docs, stats = mix_documents([doc(1)], [doc(9)], 0.9, seed=0)
    assert stats["text_tokens"] == 9 and stats["text_epochs"] == 1
