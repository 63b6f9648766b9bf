"""Tiny real-model files built in the test itself (never downloaded): a byte-level BPE
tokenizer.json with ChatML special tokens, a Hugging Face Llama directory, and GGUF files
written with gguf.GGUFWriter (tensors optionally quantized with gguf.quants.quantize).
Shared by tests/test_pretrained.py and the interop group."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

CHATML_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the order shipped kettle mug lamp arrives March total price refund return shop def return "
         "print café naïve 東京 emoji 🙂 x = 1 + 2").split()


def make_tokenizer_json(path: Path, vocab_size: int = 400):
    """A byte-level BPE (digits split one by one, as SmolLM2's) trained on a little text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(20)) + f" {rng.randint(0, 9999)}\n" for _ in range(300)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return tok


def hf_config(vocab_size: int, tie: bool = True) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": tie, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "rope_scaling": None, "bos_token_id": 1, "eos_token_id": 2}


def random_hf_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named float32 tensors of a random Llama of config cfg (norm weights not all ones)."""
    g = torch.Generator().manual_seed(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    w = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight": r(kv, d),
                  p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.o_proj.weight": r(d, d),
                  p + "mlp.gate_proj.weight": r(f, d), p + "mlp.up_proj.weight": r(f, d),
                  p + "mlp.down_proj.weight": r(d, f)})
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = r(v, d)
    return w


def make_hf_dir(directory: Path, tie: bool = True, sharded: bool = False, seed: int = 0):
    """-> (directory, HF-named weights): config.json, model.safetensors (or two shards with an
    index), tokenizer.json, tokenizer_config.json with a ChatML template."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer_json(directory / "tokenizer.json")
    cfg = hf_config(tok.get_vocab_size(), tie)
    (directory / "config.json").write_text(json.dumps(cfg))
    weights = random_hf_weights(cfg, seed)
    if sharded:
        names = sorted(weights)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, keys in halves.items():
            save_file({k: weights[k] for k in keys}, str(directory / file))
        index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(weights, str(directory / "model.safetensors"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "chat_template": CHATML_JINJA}))
    return directory, weights


def converter_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's row order for q/k, written out per row: GGUF row h*D + 2i + j is HF row
    h*D + j*D/2 + i."""
    rows = w.shape[0]
    D = rows // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for i in range(D // 2):
            for j in range(2):
                out[h * D + 2 * i + j] = w[h * D + j * (D // 2) + i]
    return out


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def make_gguf(path: Path, hf_dir: Path, weights: dict, qtype: str = "F32") -> dict[str, np.ndarray]:
    """Write the HF model as GGUF (the converter's names and q/k permutation; 2-D weights in
    `qtype`, norms in F32). -> the float32 values each tensor holds after quantization, by GGUF name."""
    import gguf

    cfg = json.loads((hf_dir / "config.json").read_text())
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"] for t in tj["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in added else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_JINJA)
    held = {}
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in weights.items():
        x = t.numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
        if gname.endswith("attn_q.weight"):
            x = converter_permute(x, n_head)
        elif gname.endswith("attn_k.weight"):
            x = converter_permute(x, n_kv)
        kind = gguf.GGMLQuantizationType[qtype if x.ndim == 2 else "F32"]
        raw = gguf.quants.quantize(x, kind)
        w.add_tensor(gname, raw, raw_dtype=kind)
        held[gname] = gguf.quants.dequantize(raw, kind).reshape(x.shape).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held
