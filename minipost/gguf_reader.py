"""Reading a llama.cpp GGUF file (architecture "llama") into minipost's GPT and tokenizer.

The `gguf` package parses the container (metadata keys, tensor names, shapes, raw bytes);
the values are dequantized by minipost/gguf_quants.py, and q_proj / k_proj rows are put
back in Hugging Face order (the permutation is written out in minipost/pretrained.py).

Keys read: llama.{block_count, embedding_length, feed_forward_length, attention.head_count,
attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon, context_length,
rope.dimension_count, vocab_size}; a llama.rope.scaling.type other than "none" is refused.
Tensors: token_embd, output_norm, output (absent: tied to token_embd), blk.i.{attn_norm,
attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minipost.checkpoint import CheckpointError
from minipost.config import GPTConfig
from minipost.gguf_quants import dequantize

_BLOCK_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "mlp_norm", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj",
                "attn_v": "attn.v_proj", "attn_output": "attn.o_proj", "ffn_gate": "mlp.gate_proj",
                "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "tok_emb", "output_norm": "norm", "output": "lm_head"}


def unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """w [n_heads * D, d_in] in llama.cpp's interleaved row order -> rotate-half (HF) order."""
    rows, d_in = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, d_in).transpose(1, 2).reshape(rows, d_in)


def permute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The converter's direction (HF -> GGUF), the inverse of unpermute_rows."""
    rows, d_in = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, d_in).transpose(1, 2).reshape(rows, d_in)


def minipost_name(gguf_name: str) -> str:
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    raise KeyError(gguf_name)


def _field(reader, key: str, source: Path, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{source}: metadata key {key} is missing")
        return default
    return field.contents()


def _as_written(value) -> float:
    """GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal
    that rounds to the same float32 is the value the model's config had."""
    return float(str(np.float32(value)))


def config_from_gguf(reader, source: Path) -> GPTConfig:
    arch = _field(reader, "general.architecture", source)
    if arch != "llama":
        raise CheckpointError(f"{source}: general.architecture = {arch!r} is not supported (minipost reads 'llama')")
    scaling = _field(reader, "llama.rope.scaling.type", source, "none")
    if scaling != "none":
        raise CheckpointError(f"{source}: llama.rope.scaling.type = {scaling!r} is not supported (only plain RoPE)")
    get = lambda key, default=None: _field(reader, f"llama.{key}", source, default)  # noqa: E731
    n_head, d_model = int(get("attention.head_count")), int(get("embedding_length"))
    rope_dim = int(get("rope.dimension_count", d_model // n_head))
    if rope_dim != d_model // n_head:
        raise CheckpointError(f"{source}: llama.rope.dimension_count = {rope_dim} is not supported "
                              f"(RoPE over the whole head of {d_model // n_head})")
    vocab = get("vocab_size", -1)
    if vocab == -1:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    return GPTConfig(vocab_size=int(vocab), n_layer=int(get("block_count")), n_head=n_head, d_model=d_model,
                     n_kv_head=int(get("attention.head_count_kv", n_head)), d_ff=int(get("feed_forward_length")),
                     max_seq_len=int(get("context_length", 2048)), rope_theta=_as_written(get("rope.freq_base", 10000.0)),
                     norm_eps=_as_written(get("attention.layer_norm_rms_epsilon", 1e-5)),
                     tie_embeddings="output.weight" not in names)


def gguf_tensors(reader, cfg: GPTConfig, source: Path) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, under minipost names, q/k rows un-permuted."""
    out = {}
    for t in reader.tensors:
        try:
            name = minipost_name(t.name)
        except KeyError:
            if t.name.endswith("rope_freqs.weight"):
                raise CheckpointError(f"{source}: {t.name} (scaled RoPE frequencies) is not supported") from None
            raise CheckpointError(f"{source}: unexpected tensor {t.name!r} for a llama model") from None
        n_per_row = int(t.shape[0])  # GGUF lists dimensions innermost first
        try:
            values = dequantize(t.data, t.tensor_type.name, n_per_row)
        except ValueError as e:
            raise CheckpointError(f"{source}: tensor {t.name}: {e}") from None
        w = torch.from_numpy(np.ascontiguousarray(values))
        if len(t.shape) == 1:
            w = w.reshape(-1)
        if name.endswith("attn.q_proj.weight"):
            w = unpermute_rows(w, cfg.n_head)
        elif name.endswith("attn.k_proj.weight"):
            w = unpermute_rows(w, cfg.n_kv_head)
        out[name] = w
    return out


def read_tokenizer(reader, source: Path):
    from minipost.hf_tokenizer import HFTokenizer

    model = _field(reader, "tokenizer.ggml.model", source)
    if model != "gpt2":
        raise CheckpointError(f"{source}: tokenizer.ggml.model = {model!r} is not supported (minipost reads "
                              f"byte-level BPE, 'gpt2')")
    get = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    try:
        return HFTokenizer.from_gguf(get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type"),
                                     get("tokenizer.ggml.merges"), get("tokenizer.ggml.pre") or "default",
                                     get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id"),
                                     get("tokenizer.ggml.padding_token_id"), get("tokenizer.chat_template"),
                                     str(source))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: cannot build its tokenizer: {e}") from e


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """FILE.gguf -> (GPT, HFTokenizer)."""
    import gguf

    from minipost.pretrained import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file: {e}") from e
    cfg = config_from_gguf(reader, path)
    model = build_model(cfg, gguf_tensors(reader, cfg, path), str(path), dtype)
    return model, read_tokenizer(reader, path)
