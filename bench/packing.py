"""Useful (non-pad) tokens per second: packed rows with document masks vs padded batches.

Trains the default model for a few steps on the built-in SFT conversations both ways and
prints a markdown table, after the conversations' length histogram (data/README.md shows it).
Padding wastes the compute of every pad position; packing fills rows and keeps documents
apart with the mask, so more of each step is real tokens.

    python bench/packing.py [--preset small] [--steps 20] [--batch-size 16] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import time

import torch

from minipost import data as datasets
from minipost.config import preset
from minipost.formats import sft_tokens
from minipost.model import GPT
from minipost.packing import pack, pad_batch
from minipost.stages.pretrain import get_tokenizer
from minipost.stages.sft import tokenize, trained_nll_sum, trim


def measure(model, opt, rows, batch_size, steps, trim_pads):
    # Batches of rows drawn at random, as training draws them: best-fit packing puts the
    # longest documents in its first rows, so the first rows in order are not typical.
    order = torch.randperm(rows["input_ids"].shape[0], generator=torch.Generator().manual_seed(0))
    useful = seen = 0
    for step in range(steps + 1):  # step 0 warms up and is not timed
        if step == 1:
            start = time.perf_counter()
        idx = order[torch.arange(step * batch_size, (step + 1) * batch_size) % len(order)]
        b = {k: v[idx] for k, v in rows.items()}
        if trim_pads:
            b = trim(b)
        loss, _ = trained_nll_sum(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= 1:
            useful += int(b["real"].sum())
            seen += b["input_ids"].numel()
    elapsed = time.perf_counter() - start
    return useful / elapsed, useful / seen, elapsed / steps


def length_histogram(records, tok, width: int = 100) -> None:
    """Tokens per conversation (before any cut to --seq-len), in bins of `width`."""
    lengths = sorted(len(sft_tokens(r, tok)[0]) for r in records)
    print(f"{len(lengths)} conversations, {lengths[0]}-{lengths[-1]} tokens, "
          f"median {lengths[len(lengths) // 2]}, mean {sum(lengths) / len(lengths):.0f}\n")
    print("| tokens | conversations |")
    print("|---|---|")
    for lo in range(0, lengths[-1] + 1, width):
        n = sum(lo <= n_tok < lo + width for n_tok in lengths)
        print(f"| {lo}-{lo + width - 1} | {n} |")
    print()


def flex_attention_trains_here() -> str:
    """FlexAttention with a block mask is the other way not to compute what the document mask
    removes (whole masked tiles are skipped); can it train (forward + backward) on this CPU?"""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    doc = torch.arange(4).repeat_interleave(64)[None]  # four documents of 64 tokens
    block = create_block_mask(lambda b, h, q, k: (k <= q) & (doc[b, q] == doc[b, k]), 1, None, 256, 256,
                              device="cpu")
    q = torch.randn(1, 2, 256, 32, requires_grad=True)
    try:
        flex_attention(q, q, q, block_mask=block).sum().backward()
    except NotImplementedError as e:  # what this probe detects: torch 2.13 has no FlexAttention backward on CPU
        return f"no ({type(e).__name__}: {str(e).splitlines()[0]})"
    return "yes: time it against the per-document path before choosing"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    args = p.parse_args()
    torch.manual_seed(0)

    class A:  # the tokenizer helper expects stage-style arguments
        stage, vocab_size = "bench", 3072

    tok = get_tokenizer(A)
    records = datasets.read_sft(datasets.builtin("sft_train"))
    length_histogram(records, tok)
    docs = tokenize(records, tok, "prompt", args.seq_len, "bench")
    packed = pack(docs, args.seq_len, tok.pad_id)
    packed["real"] = packed.pop("doc_index") >= 0
    padded = pad_batch(docs, tok.pad_id, args.seq_len)
    padded["real"] = padded["doc_ids"] == 0
    layouts = {"packed + document mask": (packed, False), "padded to longest in batch": (padded, True)}
    print(f"| layout | useful tokens/s | useful fraction | s/step (batch {args.batch_size}) |")
    print("|---|---|---|---|")
    results = {}
    for name, (rows, trim_pads) in layouts.items():
        torch.manual_seed(0)
        model = GPT(preset(args.preset, tok.vocab_size))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        results[name] = measure(model, opt, rows, args.batch_size, args.steps, trim_pads)
        tps, frac, sps = results[name]
        print(f"| {name} | {tps:,.0f} | {frac:.2f} | {sps:.2f} |")
    ratio = results["packed + document mask"][0] / results["padded to longest in batch"][0]
    print(f"\npacked / padded useful tokens per second: {ratio:.2f}x")
    print(f"FlexAttention trains on this CPU: {flex_attention_trains_here()}")


if __name__ == "__main__":
    main()
