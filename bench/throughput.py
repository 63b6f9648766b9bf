"""Training-step throughput and model-FLOPs utilisation (MFU), float32 vs bf16 autocast.

Times SFT, DPO and GRPO steps (bench/steps.py: what each step contains and how its FLOPs
are counted) on the built-in model and on SmolLM2-135M's shape (random weights), full
training and LoRA, and generation, against the peak this script measures itself: a
2048 x 2048 x 2048 matmul in each dtype on the same threads. Prints a markdown table.

    python bench/throughput.py [--shapes builtin,smollm2] [--repeats 3] [--breakdown]

--breakdown splits each SFT row's step into the lm_head with its loss, the linear layers,
attention, the optimizer and the elementwise rest, each part timed on its own (breakdown()):
what keeps the MFU below 100%.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from steps import SMOLLM2, STEPS, batch, build, step_flops  # noqa: E402

from minipost import backend  # noqa: E402
from minipost.attention import attention  # noqa: E402
from minipost.config import preset  # noqa: E402
from minipost.generate import generate  # noqa: E402
from minipost.vocab_logps import vocab_logps  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def peak_flops(dtype, n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


def time_it(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def breakdown(model, cfg, ids, targets, opt, total: float, repeats: int) -> dict[str, float]:
    """Seconds of one SFT-shaped step (B x T tokens, the second half scored) per part, each
    part timed on its own (min of repeats) at the step's shapes, precision and threads:
    the lm_head with its loss (forward + backward from the final hidden states), the
    linear layers of one block (LoRA branches included) x n_layer, attention of one layer
    x n_layer, the optimizer step; what is left of the whole step's time is elementwise
    work (norms, RoPE, SiLU, residual adds, dtype casts). torch.profiler was tried first
    and dropped: its per-op overhead inflated the [N, vocab] ops ten-fold."""
    B, T = ids.shape
    scored = targets != -100
    device = ids.device
    hidden = model.hidden_states(ids).detach()[scored].requires_grad_()

    def head():
        (-vocab_logps(model, hidden, targets[scored]).mean()).backward()  # as the step's loss

    block = model.layers[0]
    linears = [block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.o_proj,
               block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj]
    dtype = backend.autocast_dtype(model.base_params) or torch.float32
    # inputs in the dtype the model hands its linear layers (a norm's output is already bf16)
    # and output gradients given (a .sum().backward() would add passes of its own to the time)
    size = lambda m, side: getattr(m.base if hasattr(m, "base") else m, side)  # noqa: E731
    xs = {m: (torch.randn(B, T, size(m, "in_features")).to(dtype).requires_grad_(),
              torch.randn(B, T, size(m, "out_features")).to(dtype)) for m in linears}

    def layer_linears():
        with backend.autocast(device, model.base_params):
            for m, (x, dy) in xs.items():  # autograd.grad: no .grad accumulated into x over the repeats
                torch.autograd.grad(m(x), [x, *(p for p in m.parameters() if p.requires_grad)], dy)

    qkv = [torch.randn(B, h, T, cfg.head_dim).to(dtype).requires_grad_() for h in (cfg.n_head, cfg.n_kv_head, cfg.n_kv_head)]
    d_out = torch.randn(B, cfg.n_head, T, cfg.head_dim).to(dtype)

    def layer_attention():
        torch.autograd.grad(attention(*qkv), qkv, d_out)

    grads = {q: torch.randn_like(q) for group in opt.param_groups for q in group["params"]}

    def optimizer_step():
        for q, g in grads.items():
            q.grad = g
        opt.step()

    parts = {"lm_head + cross-entropy (forward + backward)": time_it(head, repeats)[0],
             f"linear layers (LoRA branches included), {cfg.n_layer} layers": time_it(layer_linears, repeats)[0] * cfg.n_layer,
             f"attention, {cfg.n_layer} layers": time_it(layer_attention, repeats)[0] * cfg.n_layer,
             "optimizer (AdamW)": time_it(optimizer_step, repeats)[0]}
    model.zero_grad(set_to_none=True)
    parts["the rest: norms, RoPE, SiLU, residual adds, casts"] = total - sum(parts.values())
    return parts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="builtin,smollm2")
    p.add_argument("--kinds", default="sft,dpo,grpo")
    p.add_argument("--pefts", default="none,lora")
    native = backend.bf16_supported()
    p.add_argument("--precisions", default="fp32,bf16" if native else "fp32",
                   help="default: bf16 too where it is native (AVX512-BF16/AMX); emulated it is ~35x slower")
    p.add_argument("--batch", type=int, default=4, help="rows (DPO: pairs, so twice the rows)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smollm2-layers", type=int, default=30, help="fewer layers for a quicker run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--breakdown", action="store_true", help="after each SFT row, where its time goes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    if not native:
        print("bf16 is not native on this CPU (no AVX512-BF16 or AMX): its rows "
              + ("are emulated, not what bf16 hardware does" if "bf16" in precisions else "are left out"))
    peaks = {name: peak_flops(DTYPES[name]) for name in dict.fromkeys(["fp32", *precisions])}
    print(f"peak (2048^3 matmul, {args.threads} thread): "
          + ", ".join(f"{name} {peak / 1e9:.0f} GFLOP/s" for name, peak in peaks.items()) + "\n")
    bf16_mfu = lambda flops_per_s: f"{flops_per_s / peaks['bf16']:.1%}" if "bf16" in peaks else "-"  # noqa: E731
    shapes = {"builtin": preset("small", 3072), "smollm2": SMOLLM2}
    print("| shape | step | train | precision | s/step (min / median) | tokens/s | GFLOP/s | MFU vs own-dtype peak | MFU vs bf16 peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        cfg = shapes[shape]
        if shape == "smollm2":
            cfg = type(cfg)(**{**cfg.__dict__, "n_layer": args.smollm2_layers})
        for peft in args.pefts.split(","):
            model, ref = build(cfg, peft)
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
            for kind in args.kinds.split(","):
                rows = args.batch * (2 if kind == "dpo" else 1)
                ids, targets = batch(cfg, rows, args.seq)
                flops = step_flops(model, cfg, kind, peft, args.batch, args.seq)
                for prec in precisions:
                    backend.set_precision(prec)

                    def optimizer_step():
                        opt.step()
                        opt.zero_grad(set_to_none=True)

                    def step():
                        STEPS[kind](model, ref, ids, targets)
                        optimizer_step()

                    best, med = time_it(step, args.repeats)
                    print(f"| {shape} (L={cfg.n_layer}) | {kind} | {peft} | {prec} | {best:.3f} / {med:.3f} | "
                          f"{rows * args.seq / best:,.0f} | {flops / best / 1e9:.1f} | "
                          f"{flops / best / peaks[prec]:.1%} | {bf16_mfu(flops / best)} |", flush=True)
                    if args.breakdown and kind == "sft":
                        for name, sec in breakdown(model, cfg, ids, targets, opt, best, args.repeats).items():
                            print(f"|  | | | | {sec:.3f} s ({sec / best:.0%}) | {name} | | | |", flush=True)
            if peft == "none":
                model.eval()
                prompts = [list(range(1, 65))] * args.batch
                for prec in precisions:
                    backend.set_precision(prec)
                    best, med = time_it(lambda: generate(model, prompts, 32), args.repeats)
                    print(f"| {shape} (L={cfg.n_layer}) | generate {args.batch}x(64+32) | - | {prec} | "
                          f"{best:.3f} / {med:.3f} | {args.batch * 32 / best:,.0f} new | - | - | - |", flush=True)
    backend.set_precision("fp32")


if __name__ == "__main__":
    main()
