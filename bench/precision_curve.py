"""Does bf16 autocast train like float32? The same LoRA-SFT run twice, loss per step.

SmolLM2-135M's shape (random weights; --layers to shorten it), the same seed, batches and
LoRA init in both runs; only --precision differs. Prints the two curves every few steps and
the largest relative gap of the smoothed (10-step mean) losses; the goal is under 2%.

    python bench/precision_curve.py [--steps 50] [--layers 4] [--batch 4] [--seq 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from steps import SMOLLM2, build, sft_step  # noqa: E402

from minipost import backend  # noqa: E402


def curve(cfg, precision, steps, B, T, lr):
    backend.set_precision(precision)
    model, ref = build(cfg, "lora", seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(1)
    # A learnable task on random weights: continue a repeating random pattern.
    pattern = torch.randint(0, cfg.vocab_size, (B, 16), generator=g)
    losses = []
    for step in range(steps):
        shift = torch.randint(0, 16, (1,), generator=g).item()
        ids = pattern.roll(shift, 1).repeat(1, T // 16 + 1)[:, : T + 1]
        loss = sft_step(model, ref, ids[:, :-1], ids[:, 1:])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    backend.set_precision("fp32")
    return losses


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = type(SMOLLM2)(**{**SMOLLM2.__dict__, "n_layer": args.layers})
    fp32 = curve(cfg, "fp32", args.steps, args.batch, args.seq, args.lr)
    bf16 = curve(cfg, "bf16", args.steps, args.batch, args.seq, args.lr)
    print(f"LoRA-SFT, SmolLM2 shape with {args.layers} layers, {args.batch}x{args.seq} tokens, lr {args.lr}\n")
    print("| step | fp32 loss | bf16 loss | relative gap |\n|---|---|---|---|")
    for s in list(range(0, args.steps, 5)) + [args.steps - 1]:
        print(f"| {s} | {fp32[s]:.4f} | {bf16[s]:.4f} | {abs(bf16[s] - fp32[s]) / fp32[s]:.2%} |")
    smooth = lambda xs: [sum(xs[max(0, i - 9): i + 1]) / len(xs[max(0, i - 9): i + 1]) for i in range(len(xs))]  # noqa: E731
    gap = max(abs(b - a) / a for a, b in zip(smooth(fp32), smooth(bf16)))
    raw = max(abs(b - a) / a for a, b in zip(fp32, bf16))
    print(f"\nlargest relative gap: {gap:.2%} (10-step means), {raw:.2%} (single steps); "
          f"loss {fp32[0]:.3f} -> {fp32[-1]:.3f} (fp32), {bf16[0]:.3f} -> {bf16[-1]:.3f} (bf16)")


if __name__ == "__main__":
    main()
