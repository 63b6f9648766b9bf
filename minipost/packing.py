"""Fitting documents into fixed-length rows: truncation, packing, padding, batching.

A document here is a pair (input_ids, targets) of equal length with pre-shifted targets
(docs/DESIGN.md §2): targets[t] is the token after input_ids[t], -100 where there is no loss.

Packing (as in T5, Raffel et al., 2020, and most LLM training since) puts several
documents in one row of exactly seq_len tokens instead of padding each to the longest,
so little compute goes to padding. Two things keep a packed row equivalent to running its
documents one by one (docs/DESIGN.md §3):
  - doc_ids [R, L]: attention stays within a document (the model masks on it);
  - position_ids [R, L]: RoPE positions restart at 0 for each document.
Targets need nothing special: each document brings its own, pre-shifted, so no target
crosses from one document into the next.

Rows are filled by best-fit decreasing (Johnson, 1973, bin packing): take the documents
longest first, put each in the row whose free space is smallest among those it fits in,
open a new row when none fits. It wastes little space for the cost of a sort; on ties
(equal lengths, equal free space) the earlier document / the earlier row wins, so the
result is deterministic.
"""
from __future__ import annotations

import bisect
import functools
import math
from typing import Iterator, Sequence

import torch

from minipost.losses import IGNORE_INDEX
from minipost.seeding import rng

Document = tuple[Sequence[int], Sequence[int]]


def _check_doc(ids, targets, index=None) -> None:
    if len(ids) != len(targets):
        which = "" if index is None else f"document {index}: "
        raise ValueError(f"{which}input_ids and targets must have the same length, got {len(ids)} and {len(targets)}")


def text_document(tokens: Sequence[int], bos_id: int, eos_id: int) -> tuple[list[int], list[int]]:
    """A plain text for (continual) pretraining: s = [bos] + tokens + [eos], every token
    trained; returns (s[:-1], s[1:])."""
    s = [bos_id, *tokens, eos_id]
    return s[:-1], s[1:]


def split_document(input_ids: Sequence[int], targets: Sequence[int], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Cut an over-long pretraining/CPT document into chunks of at most seq_len positions.

    Plain slicing at stride seq_len loses no target: with pre-shifted targets, the target
    of a chunk's last position, targets[k*L - 1], is the token input_ids[k*L] that opens
    the next chunk, so every (input, target) pair lands in exactly one chunk and the
    token is still predicted once. (Cutting the token list s itself instead would need
    windows of L + 1 tokens overlapping by one to get the same pairs.) What a chunk
    loses is attention to the chunks before it: each chunk starts with fresh context.
    """
    _check_doc(input_ids, targets)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return [(list(input_ids[i:i + seq_len]), list(targets[i:i + seq_len]))
            for i in range(0, len(input_ids), seq_len)]


def truncate_sft(input_ids: Sequence[int], targets: Sequence[int], seq_len: int) -> tuple[list[int], list[int]]:
    """Shorten an SFT conversation to seq_len positions by cutting the tail (keep the start).

    Why the tail: every position that survives keeps exactly the context it had in the
    full conversation, so its loss is unchanged; the system prompt and the facts given
    in the prompt (e.g. the order record a reply is grounded in) are never cut. Cutting
    the start instead would train replies on a context missing the information they
    rely on, which teaches the model to make facts up. A reply cut mid-way trains its
    first part and no premature <|end|>. If the cut removes every trained token (a long
    prompt), nothing is left to learn: the caller drops the sample and reports the count
    (see fit_sft).
    """
    _check_doc(input_ids, targets)
    return list(input_ids[:seq_len]), list(targets[:seq_len])


def fit_sft(docs: Sequence[Document], seq_len: int) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """truncate_sft each document, then drop those left with no trained token.

    Returns (kept documents, {"truncated": n, "dropped": n}) so the caller can report both.
    """
    kept, truncated, dropped = [], 0, 0
    for ids, targets in docs:
        if len(ids) > seq_len:
            ids, targets = truncate_sft(ids, targets, seq_len)
            truncated += 1
        if all(t == IGNORE_INDEX for t in targets):
            dropped += 1
            continue
        kept.append((list(ids), list(targets)))
    return kept, {"truncated": truncated, "dropped": dropped}


def pack(docs: Sequence[Document], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Best-fit decreasing packing of documents (each at most seq_len long) into rows.

    docs: [(input_ids, targets)], equal lengths per document. Empty documents are skipped.
    Returns int64 tensors, R rows of exactly L = seq_len:
      input_ids    [R, L]  tokens, pad_id after the last document of a row
      targets      [R, L]  the documents' targets, -100 on padding
      doc_ids      [R, L]  0, 1, 2, ... for the documents of a row in order; the padding
                           gets the next id, distinct from every document in its row
      position_ids [R, L]  0, 1, ... restarting at each document; padding counts 0, 1, ...
      doc_index    [R, L]  which input document each token came from (-1 on padding)
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    lengths = []
    for i, (ids, targets) in enumerate(docs):
        _check_doc(ids, targets, i)
        if len(ids) > seq_len:
            raise ValueError(f"document {i} has {len(ids)} tokens, more than seq_len={seq_len}: "
                             "truncate_sft it first")
        lengths.append(len(ids))

    order = sorted((i for i in range(len(docs)) if lengths[i] > 0), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row), sorted: the first that fits is the best fit
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            row, space = len(rows), seq_len
            rows.append([])
        else:
            space, row = free.pop(k)
        rows[row].append(i)
        if space - lengths[i] > 0:
            bisect.insort(free, (space - lengths[i], row))

    cols = {key: [] for key in ("input_ids", "targets", "doc_ids", "position_ids", "doc_index")}
    for members in rows:
        ids, tgt, did, pos, src = [], [], [], [], []
        for d, i in enumerate(members):
            n = lengths[i]
            ids += list(docs[i][0])
            tgt += list(docs[i][1])
            did += [d] * n
            pos += range(n)
            src += [i] * n
        n_pad = seq_len - len(ids)
        ids += [pad_id] * n_pad
        tgt += [IGNORE_INDEX] * n_pad
        did += [len(members)] * n_pad
        pos += range(n_pad)
        src += [-1] * n_pad
        for key, values in zip(cols, (ids, tgt, did, pos, src)):
            cols[key].append(values)
    return {key: torch.tensor(v, dtype=torch.long).reshape(len(rows), seq_len) for key, v in cols.items()}


def pad_batch(docs: Sequence[Document], pad_id: int, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """The padded alternative to pack (--packing off): one document per row, right padded.

    Width W = the longest document, or seq_len when given (a longer document is an error).
    Returns int64 tensors [N, W]: input_ids (pad_id on pads), targets (-100 on pads),
    doc_ids (0 real tokens, 1 pads), position_ids (0..W-1 along every row; with right
    padding the real tokens never see the pads anyway, causality suffices).
    """
    if not docs:
        raise ValueError("pad_batch needs at least one document")
    for i, (ids, targets) in enumerate(docs):
        _check_doc(ids, targets, i)
    longest = max(len(ids) for ids, _ in docs)
    width = longest if seq_len is None else seq_len
    if longest > width:
        raise ValueError(f"a document has {longest} tokens, more than seq_len={seq_len}")
    n = len(docs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    doc_ids = torch.ones((n, width), dtype=torch.long)
    for row, (ids, tgt) in enumerate(docs):
        input_ids[row, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        targets[row, :len(tgt)] = torch.tensor(list(tgt), dtype=torch.long)
        doc_ids[row, :len(ids)] = 0
    position_ids = torch.arange(width, dtype=torch.long).expand(n, width).clone()
    return {"input_ids": input_ids, "targets": targets, "doc_ids": doc_ids, "position_ids": position_ids}


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled order of n items in epoch `epoch`: a permutation drawn from
    seeding.rng(seed, "epoch", epoch), so each epoch has its own order and none depends
    on earlier draws."""
    return tuple(torch.randperm(n, generator=rng(seed, "epoch", epoch)).tolist())


def batches(rows: dict[str, torch.Tensor], batch_size: int, seed: int, epoch: int,
            start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the rows in a shuffled order, batch_size at a time (the last batch may be smaller).

    The order depends only on (seed, epoch) (epoch_order), so a resumed run that knows its epoch and how
    many batches it already took (start) continues with exactly the batches it would have
    seen. Every tensor in rows is indexed along dim 0 alike.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = {key: t.shape[0] for key, t in rows.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all tensors in rows must have the same number of rows, got {sizes}")
    n = next(iter(sizes.values()))
    order = torch.tensor(epoch_order(n, seed, epoch))
    for b in range(start, math.ceil(n / batch_size)):
        index = order[b * batch_size:(b + 1) * batch_size]
        yield {key: t[index] for key, t in rows.items()}


# ----------------------------------------------------------------------------- preference pairs
# (the reward model and DPO batch pairs of rendered completions, data.tokenize_pairs)

def pair_batch(pairs: Sequence[tuple[Document, Document]], pad_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> one right-padded batch of 2B rows: rows 0..B-1 chosen, B..2B-1 rejected.
    input_ids, targets [2B, W] (W = the longest of all 2B), as pad_batch."""
    return pad_batch([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def pair_indices(n: int, batch_size: int, seed: int, draw: int) -> list[int]:
    """The indices (of n items) in the draw-th batch of batch_size: the items are walked epoch
    after epoch, each epoch in its own shuffled order seeded by (seed, epoch), so every item
    is seen once per epoch and a resumed run draws exactly what an uninterrupted one would.
    Unlike `batches`, a batch may run across the end of an epoch into the next."""
    out = []
    for k in range(draw * batch_size, (draw + 1) * batch_size):
        epoch, pos = divmod(k, n)
        out.append(epoch_order(n, seed, epoch)[pos])
    return out
