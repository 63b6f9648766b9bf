"""Joint continual pretraining + SFT: plain-text documents mixed into the SFT documents.

Training on a new domain's raw text and on instructions at once, rather than one stage
after the other, keeps the chat skill while the domain knowledge comes in (as in
instruction pre-training, Cheng et al. 2024, which mixes instruction data into raw corpora;
replay against forgetting as in Ibrahim et al. 2024). Both kinds go through the same
packing (packing.pack) with document masks, so a text never attends to a chat and the loss
stays the SFT loss, a mean over trained tokens:

    text document  [bos] + tokens + [eos], split into chunks of seq_len (packing.split_document);
                   every position is trained, the target is the next token of the text; no
                   target crosses a document end (each document brings its own targets)
    SFT document   render_chat's (input_ids, targets), its mask untouched

The mixing rule, by TRAINED tokens: with S the trained tokens of all SFT documents, text
documents are taken, in a seeded shuffled order, until their tokens T first reach

    T* = F * S / (1 - F),     so that  T / (T + S) = F  up to the last document taken:
                              (T - l_last) / (T - l_last + S) < F <= T / (T + S)

Trained tokens, not all tokens, because the loss is a mean over trained tokens: F is then
the share of the loss (and of its gradient) that comes from plain text, whatever the SFT
mask mode. (The test is T / (T + S) >= F - 1e-12, so float rounding of T* cannot
add a document.) If the text runs out before T*, it is reused in a new shuffled order (another
epoch over the text; stats["text_epochs"] says how many were started).
"""
from __future__ import annotations

import random
from typing import Sequence

from minipost.packing import IGNORE_INDEX, Document, split_document, text_document


def text_documents(token_lists: Sequence[Sequence[int]], bos_id: int, eos_id: int,
                   seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Plain texts (each a list of token ids, no bos/eos) -> training documents of at most
    seq_len positions: text_document, then split_document for the long ones."""
    out = []
    for tokens in token_lists:
        out += split_document(*text_document(tokens, bos_id, eos_id), seq_len)
    return out


def trained_tokens(doc: Document) -> int:
    """The number of positions of a document (input_ids, targets) that carry a loss."""
    return sum(1 for t in doc[1] if t != IGNORE_INDEX)


def mix_documents(sft_docs: Sequence[Document], text_docs: Sequence[Document], mix: float,
                  seed: int) -> tuple[list[Document], dict]:
    """The SFT documents plus plain-text documents making a fraction `mix` of the trained tokens.

    sft_docs, text_docs: [(input_ids, targets)]; mix = F in [0, 1); seed fixes the order in
    which text documents are taken (module docstring for the rule). Returns (documents, stats):
    the SFT documents unchanged and in order, then the chosen text documents; stats holds
    sft_tokens, text_tokens, text_docs, text_fraction (realized T / (T + S)) and text_epochs.
    """
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"the plain-text mix must be a fraction in [0, 1), got {mix}")
    sft_tokens = sum(trained_tokens(d) for d in sft_docs)
    lengths = [trained_tokens(d) for d in text_docs]

    def reached(text_tokens: int) -> bool:  # T / (T + S) >= F, i.e. T >= T*, up to float rounding
        return sft_tokens == 0 or text_tokens / (text_tokens + sft_tokens) >= mix - 1e-12

    if not reached(0) and sum(lengths) == 0:
        raise ValueError(f"a plain-text mix of {mix} needs text documents, got none with a trained token")
    chosen: list[Document] = []
    text_tokens, epochs = 0, 0
    while not reached(text_tokens):
        # A new order for each pass over the text, from (seed, pass) alone.
        order = list(range(len(text_docs)))
        random.Random(seed * 1_000_003 + epochs).shuffle(order)
        epochs += 1
        for i in order:
            if reached(text_tokens):
                break
            if lengths[i]:
                chosen.append(text_docs[i])
                text_tokens += lengths[i]
    total = text_tokens + sft_tokens
    stats = {"sft_tokens": sft_tokens, "text_tokens": text_tokens, "text_docs": len(chosen),
             "text_fraction": text_tokens / total if total else 0.0, "text_epochs": epochs}
    return [*sft_docs, *chosen], stats


def joint_cpt_sft(sft_docs: Sequence[Document], texts: Sequence[str], tokenizer, mix: float, seq_len: int,
                  seed: int) -> tuple[list[Document], dict]:
    """The one call a stage needs: SFT documents (render_chat, fit_sft to seq_len) plus the
    texts (e.g. data.read_texts of a CPT file) mixed in at `mix` of the trained tokens.
    Returns (documents ready for packing.pack(docs, seq_len, pad_id), stats as mix_documents)."""
    text_docs = text_documents([tokenizer.encode(t) for t in texts], tokenizer.bos_id, tokenizer.eos_id, seq_len)
    return mix_documents(sft_docs, text_docs, mix, seed)
