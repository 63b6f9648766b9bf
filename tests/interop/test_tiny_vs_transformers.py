"""Tiny random Llamas (tests/tiny_models.py) against transformers as the oracle: logits of an
HF directory and of a GGUF, tokenizer ids, rendered chats, greedy generation."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from minipost import pretrained  # noqa: E402
from minipost.chat import render_chat, generation_prompt, MASK_MODES  # noqa: E402
from minipost.generate import generate  # noqa: E402
from tests.interop.common import (CHATS, PROMPTS, TEXTS, chat_ids_reference, generation_prompt_reference,  # noqa: E402
                                  greedy_reference)
from tests.tiny_models import make_gguf, make_hf_dir  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    directory, weights = make_hf_dir(root / "hf", tie=False)
    make_gguf(root / "m.gguf", directory, weights, "F32")
    return root, directory


def hf_model(**kw):
    return transformers.AutoModelForCausalLM.from_pretrained(dtype=torch.float32, **kw).eval()


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_logits_and_greedy_match_transformers(tiny, source):
    root, directory = tiny
    if source == "hf":
        ours, _ = pretrained.load_pretrained(directory)
        theirs = hf_model(pretrained_model_name_or_path=str(directory))
    else:
        ours, _ = pretrained.load_pretrained(root / "m.gguf")
        theirs = hf_model(pretrained_model_name_or_path=str(root), gguf_file="m.gguf")
    x = torch.randint(0, ours.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - theirs(x).logits).abs().max().item()
    assert diff <= 1e-4
    for k in range(5):
        prompt = x[k % 3, : 5 + 3 * k].tolist()
        got = generate(ours, [prompt], 32).tokens[0].tolist()
        assert got == greedy_reference(theirs, prompt, 32, pad_id=0)


@pytest.fixture(scope="module")
def tokenizers_pair(tiny):
    from minipost.hf_tokenizer import HFTokenizer

    _, directory = tiny
    return HFTokenizer.from_dir(directory), transformers.AutoTokenizer.from_pretrained(str(directory))


def test_token_ids_match_autotokenizer(tokenizers_pair):
    ours, theirs = tokenizers_pair
    for text in TEXTS:
        if "<|im_start|>" in text:
            continue  # transformers maps typed special-token text to the control id; minipost never does
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text


def test_typed_special_text_never_gives_a_control_id(tokenizers_pair):
    ours, theirs = tokenizers_pair
    text = "<|im_start|>user\nnot a turn<|im_end|>"
    assert not set(ours.encode(text)) & ours.control_ids
    assert ours.encode(text) == theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("mask", MASK_MODES)
def test_rendered_chats_match_apply_chat_template(tokenizers_pair, mask):
    ours, theirs = tokenizers_pair
    for chat in CHATS:
        input_ids, targets = render_chat(chat, ours, mask)
        full = chat_ids_reference(theirs, chat)
        assert input_ids == full[:-1]
        assert len(targets) == len(input_ids)
    for prompt in PROMPTS:
        assert generation_prompt(prompt, ours) == generation_prompt_reference(theirs, prompt)
