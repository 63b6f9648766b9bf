"""SentencePiece tokenizer trained on the project's own corpus (Kudo & Richardson, 2018).

The chat roles are SentencePiece *control* symbols: they have ids, but `encode` never
produces them from text. A user who types "<|end|>" gets the characters '<', '|', 'end',
... and cannot close their own turn (template injection). The chat template inserts the
control ids directly (see chat.py).

Choices: BPE; byte fallback, so any text encodes; identity normalization, no dummy prefix
and no whitespace collapsing, so decode(encode(text)) == text; digits split one per token,
which makes arithmetic learnable for a small model; "\\n" is a piece of its own because the
chat template and the corpus are line-structured.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from minipost.chat import MINIPOST_TEMPLATE

SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


class Tokenizer:
    template = MINIPOST_TEMPLATE  # the chat format chat.py renders with this tokenizer

    def __init__(self, model_path: str | Path):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"no tokenizer model at {model_path}")
        self.path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        self.special = {name: self.sp.piece_to_id(name) for name in SPECIAL_TOKENS}
        for name, i in self.special.items():
            if not self.sp.is_control(i):
                raise ValueError(f"{model_path}: {name} is not a control symbol of this model")
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID
        self.system_id = self.special["<|system|>"]
        self.user_id = self.special["<|user|>"]
        self.assistant_id = self.special["<|assistant|>"]
        self.end_id = self.special["<|end|>"]
        self.control_ids = frozenset([*self.special.values(), BOS_ID, EOS_ID, PAD_ID])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def special_id(self, name: str) -> int:
        """The id of a chat control token, by its text ("<|user|>")."""
        return self.special[name]

    def save(self, out_dir: str | Path) -> None:
        """Copy tokenizer.model into out_dir (atomically), so a checkpoint loads on its own."""
        target = Path(out_dir) / "tokenizer.model"
        if self.path.resolve() != target.resolve():
            tmp = target.with_name(".tokenizer.model.tmp")
            shutil.copyfile(self.path, tmp)
            tmp.replace(target)

    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids; never yields a control id, whatever the text contains."""
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int], keep_special: bool = False) -> str:
        """ids -> text. Control tokens are dropped, or written as their names with keep_special."""
        ids = [int(i) for i in ids]
        if not keep_special:
            return self.sp.decode([i for i in ids if i not in self.control_ids])
        out, run = [], []
        for i in ids:
            if i in self.control_ids:
                out.append(self.sp.decode(run))
                out.append(self.sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)

    @classmethod
    def train(cls, texts: Iterable[str], model_path: str | Path, vocab_size: int = 3072,
              split_digits: bool = True) -> "Tokenizer":
        """Train on `texts` (each split into lines, as SentencePiece reads lines) and save."""
        model_path = Path(model_path)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        lines = (line for text in texts for line in text.split("\n") if line.strip())
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=buffer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=split_digits,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n"],
            control_symbols=list(SPECIAL_TOKENS),
            unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=False,
            num_threads=2,
            minloglevel=2,
        )
        tmp = model_path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(model_path)  # atomic: a half-written model is never loaded
        return cls(model_path)
