"""Prompt tuning (peft/prompt.py): the model on [P_e; X_e] written out by hand."""
import copy

import pytest
import torch
import torch.nn.functional as F

from minipost.config import preset
from minipost.generate import generate
from minipost.model import GPT, KVCache
from minipost.peft import apply_prompt, trainable_parameters

VOCAB = 97


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=VOCAB)).eval()


def test_logits_equal_model_on_concatenated_embeddings():
    base = tiny()
    model = apply_prompt(copy.deepcopy(base), n_virtual=5)
    ids = torch.randint(0, VOCAB, (2, 11))
    virtual = model.prompt.weight.detach()
    embeds = torch.cat([virtual.expand(2, -1, -1), base.tok_emb(ids)], dim=1)  # [2, 5 + 11, d]
    logits, hidden = model(ids, return_hidden=True)
    assert logits.shape == (2, 11, VOCAB)
    # Positions 0..15, as for text; the hook's -5..10 differ by a constant, which RoPE ignores.
    ref_logits, ref_hidden = base(inputs_embeds=embeds, return_hidden=True)
    torch.testing.assert_close(logits, ref_logits[:, 5:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden, ref_hidden[:, 5:], rtol=1e-5, atol=1e-6)
    shifted = torch.arange(-5, 11).expand(2, 16)
    torch.testing.assert_close(logits, base(inputs_embeds=embeds, position_ids=shifted)[:, 5:], rtol=0, atol=1e-6)


def test_hook_shapes_positions_and_doc_ids():
    model = apply_prompt(tiny(), n_virtual=3)
    x = torch.randn(2, 4, 64)
    pos = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]])
    docs = torch.tensor([[1, 1, 2, 2], [0, 0, 0, 0]])
    x2, d2, p2 = model.prompt(x, docs, pos)
    assert x2.shape == (2, 7, 64) and torch.equal(x2[:, 3:], x) and torch.equal(x2[1, :3], model.prompt.weight)
    assert p2.tolist() == [[-3, -2, -1, 0, 1, 0, 1], [-3, -2, -1, 0, 1, 2, 3]]
    assert d2.tolist() == [[-1, -1, -1, 1, 1, 2, 2], [-1, -1, -1, 0, 0, 0, 0]]
    assert model.prompt(x, None, pos)[1] is None


def test_packed_row_equals_each_document_behind_its_own_prompt():
    model = apply_prompt(tiny(), n_virtual=4)
    torch.manual_seed(3)
    docs = [torch.randint(0, VOCAB, (n,)) for n in (4, 1, 7)]
    ids = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed = model(ids, doc_ids=doc_ids, position_ids=positions)[0]
    alone = torch.cat([model(d[None])[0] for d in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_init_options():
    base = tiny()
    emb = base.tok_emb.weight.detach()

    torch.manual_seed(0)
    w = apply_prompt(copy.deepcopy(base), n_virtual=16, init="random").prompt.weight.detach()
    assert w.shape == (16, 64)
    assert abs(w.std().item() / emb.std().item() - 1) < 0.1  # 1024 draws: std within ~2% typically

    w = apply_prompt(copy.deepcopy(base), n_virtual=8, init="vocab").prompt.weight.detach()
    assert all(any(torch.equal(row, e) for e in emb) for row in w)

    class Tok:
        def encode(self, text):
            return [5, 9, 2] if text == "positive or negative" else []

    w = apply_prompt(copy.deepcopy(base), n_virtual=7, init="positive or negative", tokenizer=Tok()).prompt.weight
    assert torch.equal(w.detach(), emb[[5, 9, 2, 5, 9, 2, 5]])  # repeated to 7
    w = apply_prompt(copy.deepcopy(base), n_virtual=2, init="positive or negative", tokenizer=Tok()).prompt.weight
    assert torch.equal(w.detach(), emb[[5, 9]])  # cropped to 2
    with pytest.raises(ValueError, match="tokenizer"):
        apply_prompt(copy.deepcopy(base), init="some text")
    with pytest.raises(ValueError, match="no tokens"):
        apply_prompt(copy.deepcopy(base), init="empty", tokenizer=Tok())


def test_only_the_prompt_trains():
    model = apply_prompt(tiny(), n_virtual=6)
    ids = torch.randint(0, VOCAB, (2, 10))
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name == "prompt.weight"), name
    assert trainable_parameters(model) == (6 * 64, tiny().num_parameters() + 6 * 64)


def test_kv_cache_and_generation_with_a_prompt():
    model = apply_prompt(tiny(), n_virtual=3)
    ids = torch.randint(0, VOCAB, (2, 8))
    full = model(ids)
    cache = KVCache(model.cfg.n_layer)
    steps = [model(ids[:, :4], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(4, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.n_global == 3
    prompts = [[3, 4, 5, 6, 7], [8, 9]]  # left padding: pads get their own document
    cached = generate(model, prompts, 6)
    uncached = generate(model, prompts, 6, use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.logps, uncached.logps, rtol=1e-4, atol=1e-5)
