"""Byte-level BPE tokenizers of real models (GPT-2 style, Radford et al., 2019; SmolLM2, Llama 3)
through the `tokenizers` library, behind the interface of minipost's own Tokenizer (§4):
encode, decode, bos/eos/pad ids, end_id, control_ids, vocab_size, special_id, template, save.

Template injection: `tokenizers` matches added special tokens in the input text by default,
so encoding "<|im_end|>" typed by a user would give the control id and close their turn.
`encode` therefore runs a copy of the tokenizer from which the special added tokens are
removed: the text is split by the pre-tokenizer ("<|", "im", "_", "end", "|>") and goes
through BPE like any other text. Loading checks that no special token's own text encodes
to a special id with that copy, so the guarantee holds for the vocabulary at hand.

Two sources:
  from_dir(dir):   tokenizer.json + tokenizer_config.json (bos/eos/pad/unk, chat_template),
                   and template.json where minipost saved one (a checkpoint of a run).
  from_gguf(...):  the GGUF's tokenizer.ggml.* arrays: tokens, token types (3 = control,
                   added as special tokens), merges, and the pre-tokenizer name. "smollm"
                   (llama.cpp's regexes "\\p{N}" then GPT-2's) is Digits(individual) then
                   ByteLevel; "gpt2"/"default" is ByteLevel alone.
The chat format is recognised from the jinja chat template (ChatML, with its default system
message, or minipost's own); any other template leaves `template` None (chat rendering then
says so; plain-text stages still work).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer as HFCoreTokenizer, decoders, models, pre_tokenizers

from minipost.chat import MINIPOST_TEMPLATE, Template, chatml_template
from minipost.checkpoint import read_json, write_json, atomic_write

CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def template_from_jinja(chat_template: str | None) -> Template | None:
    """Recognise a jinja chat template: ChatML (default system message read from it) or
    minipost's own; None for anything else."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.S)
        default = found.group(1) if found and "messages[0]['role'] != 'system'" in chat_template else None
        return chatml_template(default)
    if chat_template == MINIPOST_TEMPLATE.to_jinja():
        return MINIPOST_TEMPLATE
    return None


class HFTokenizer:
    def __init__(self, core: HFCoreTokenizer, *, bos: str | None, eos: str, pad: str | None,
                 template: Template | None, chat_template: str | None = None, source: str = "tokenizer"):
        self.core = core
        self.path = source  # where it came from, for messages
        self.template = template
        self.chat_template = chat_template if chat_template else (template.to_jinja() if template else None)
        vocab = core.get_vocab(with_added_tokens=True)
        self.tokens = {"bos": bos, "eos": eos, "pad": pad or eos}

        def token_id(text):
            if text not in vocab:
                raise ValueError(f"{source}: the special token {text!r} is not in the vocabulary")
            return vocab[text]

        self.eos_id = token_id(eos)
        self.bos_id = token_id(bos) if bos else self.eos_id
        self.pad_id = token_id(pad) if pad else self.eos_id
        specials = [t for t in core.get_added_tokens_decoder().values() if t.special]
        self.control_ids = frozenset([*(vocab[t.content] for t in specials), self.bos_id, self.eos_id, self.pad_id])
        self.end_id = token_id(template.end) if template else self.eos_id
        self._ids = vocab
        # The copy `encode` uses: the same tokenizer without its special added tokens.
        spec = json.loads(core.to_str())
        spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if not t.get("special")]
        self._plain = HFCoreTokenizer.from_str(json.dumps(spec))
        for t in specials:
            leaked = set(self._plain.encode(t.content, add_special_tokens=False).ids) & self.control_ids
            if leaked:
                raise ValueError(f"{source}: the text of {t.content!r} encodes to special ids {sorted(leaked)}")

    @property
    def vocab_size(self) -> int:
        return self.core.get_vocab_size(with_added_tokens=True)

    def special_id(self, text: str) -> int:
        i = self._ids.get(text)
        if i is None or i not in self.control_ids:
            raise ValueError(f"{self.path}: {text!r} is not a special token of this tokenizer")
        return i

    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids; never yields a special id, whatever the text contains."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], keep_special: bool = False) -> str:
        """ids -> text. Special tokens are dropped, or written as their text with keep_special."""
        ids = [int(i) for i in ids]
        if not keep_special:
            ids = [i for i in ids if i not in self.control_ids]
        return self.core.decode(ids, skip_special_tokens=False)

    # --- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> "HFTokenizer":
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no tokenizer.json (a byte-level BPE tokenizer is expected)")
        core = HFCoreTokenizer.from_file(str(path))
        cfg = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
        token = lambda key: cfg[key]["content"] if isinstance(cfg.get(key), dict) else cfg.get(key)  # noqa: E731
        chat_template = cfg.get("chat_template")
        if isinstance(chat_template, list):  # several named templates: take the default one
            chat_template = next((t["template"] for t in chat_template if t.get("name") == "default"), None)
        if (directory / "template.json").is_file():
            template = Template.from_dict(read_json(directory / "template.json"))
        else:
            template = template_from_jinja(chat_template)
        eos = token("eos_token")
        if eos is None:
            raise ValueError(f"{directory / 'tokenizer_config.json'}: no eos_token")
        return cls(core, bos=token("bos_token"), eos=eos, pad=token("pad_token"), template=template,
                   chat_template=chat_template, source=str(directory))

    @classmethod
    def from_gguf(cls, tokens: list[str], token_types: list[int], merges: list[str], pre: str,
                  bos_id: int | None, eos_id: int, pad_id: int | None, chat_template: str | None,
                  source: str) -> "HFTokenizer":
        """Build the tokenizer from a GGUF file's tokenizer.ggml.* fields (model "gpt2")."""
        vocab = {t: i for i, t in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
        core = HFCoreTokenizer(bpe)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        elif pre in ("gpt2", "default"):
            core.pre_tokenizer = byte_level
        else:
            raise ValueError(f"{source}: tokenizer.ggml.pre = {pre!r} is not supported (minipost reads "
                             f"'smollm', 'gpt2', 'default')")
        core.decoder = decoders.ByteLevel()
        core.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                 for i, kind in enumerate(token_types) if kind == CONTROL_TOKEN_TYPE])
        name = lambda i: tokens[i] if i is not None else None  # noqa: E731
        return cls(core, bos=name(bos_id), eos=tokens[eos_id], pad=name(pad_id),
                   template=template_from_jinja(chat_template), chat_template=chat_template, source=source)

    def tokenizer_config(self) -> dict:
        """tokenizer_config.json as transformers reads it."""
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.tokens["bos"],
               "eos_token": self.tokens["eos"], "pad_token": self.tokens["pad"],
               "add_bos_token": bool(self.template and self.template.bos), "clean_up_tokenization_spaces": False,
               "model_max_length": 1 << 30}
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        return cfg

    def save(self, out_dir: str | Path) -> None:
        """tokenizer.json, tokenizer_config.json and (minipost's own) template.json, atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        text = self.core.to_str()
        atomic_write(out_dir / "tokenizer.json", lambda tmp: Path(tmp).write_text(text))
        write_json(self.tokenizer_config(), out_dir / "tokenizer_config.json")
        if self.template is not None:
            write_json(self.template.to_dict(), out_dir / "template.json")
