"""Peak memory of DPO vs SFT under LoRA: what the reference model costs.

DPO needs log-probs under a frozen reference model. Kept as a second copy of the
weights, it would double the weight memory; under LoRA, minipost takes the reference
from the same model inside peft.disable_adapters (one extra no-grad forward, no extra
weights), and for full fine-tuning it precomputes the reference log-probs before
training. This benchmark trains a few steps of each setup on the default model (out/sft
if it exists, else a fresh model of --preset) and measures the process's peak resident
memory (max RSS, resource.getrusage) in a fresh subprocess per run, so no run inherits
another's allocations.

Each run uses its stage's default batch: SFT 16 packed rows of 256 tokens, DPO 8 pairs
(16 rows: the chosen and rejected replies in one concatenated forward, ~140 tokens
each). As DPO's rows are shorter, "LoRA-SFT, same rows as DPO" also trains SFT on 16
conversations padded to the longest, the like-for-like comparison. "training" is the
increase of the peak over the RSS after loading the model and data (and, for the
precomputed reference, after the precomputation).

    python bench/memory.py [--steps 3] [--preset small] [--sft-batch 16] [--dpo-batch 8]
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = {  # name -> (stage, PEFT method, what the reference is)
    "LoRA-SFT": ("sft", "lora", None),
    "LoRA-SFT, same rows as DPO": ("sft-rows", "lora", None),
    "LoRA-DPO": ("dpo", "lora", "adapters"),
    "LoRA-DPO, reference copy": ("dpo", "lora", "copy"),  # the copy is built here (deepcopy), not by the stage
    "full SFT": ("sft", "none", None),
    "full DPO, precomputed reference": ("dpo", "none", "precompute"),
    "full DPO, reference copy": ("dpo", "none", "copy"),
}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(name: str, args) -> dict:
    """One run in this (fresh) process -> {"loaded_mb", "peak_mb", "s_per_step"}."""
    import torch

    from minipost import checkpoint, peft
    from minipost import data as datasets
    from minipost.config import preset
    from minipost.model import GPT
    from minipost.stages import common
    from minipost.stages import dpo
    from minipost.packing import pad_batch, pair_batch
    from minipost.stages.sft import make_rows, tokenize, trained_nll_sum
    from minipost.training import make_optimizer

    from minipost.cli import set_threads

    set_threads(None)  # one thread on a 2-core machine, as train.py does
    torch.manual_seed(0)
    stage, method, ref_mode = RUNS[name]
    init = Path(args.init)
    if checkpoint.current_checkpoint(init) is not None:  # a run (its current unit) or an earlier run's directory
        model, tok, _ = common.load_stage_model(init)
    else:
        from minipost.stages.pretrain import get_tokenizer

        tok = get_tokenizer(argparse.Namespace(stage="bench", vocab_size=3072))
        model = GPT(preset(args.preset, tok.vocab_size))
    ref = copy.deepcopy(model).requires_grad_(False).eval() if ref_mode == "copy" else None
    if method == "lora":
        model = peft.apply_peft(model, "lora", r=8, alpha=16)
    optimizer = make_optimizer(model, 1e-4)

    if stage == "sft":
        docs = tokenize(datasets.read_sft(datasets.builtin("sft_train"))[:400], tok, "prompt", args.seq_len, "train")
        rows = make_rows(docs, tok, args.seq_len, "on")
        batches = [{k: v[i * args.sft_batch:(i + 1) * args.sft_batch] for k, v in rows.items()}
                   for i in range(args.steps)]
    elif stage == "sft-rows":  # 2 * dpo_batch conversations, each padded to the longest: DPO's row count
        n = 2 * args.dpo_batch
        docs = tokenize(datasets.read_sft(datasets.builtin("sft_train"))[: args.steps * n], tok, "prompt",
                        args.seq_len, "train")
        batches = [pad_batch(docs[i * n:(i + 1) * n], tok.pad_id) for i in range(args.steps)]
    else:
        records = datasets.read_preferences(datasets.builtin("pref_train"))[: args.steps * args.dpo_batch]
        pairs, _ = datasets.tokenize_pairs(records, tok, model.cfg.max_seq_len)
        batches = [pair_batch(pairs[i * args.dpo_batch:(i + 1) * args.dpo_batch], tok.pad_id)
                   for i in range(args.steps)]
        if ref_mode == "precompute":
            table = dpo.logps_table(model, pairs, tok.pad_id)
    loaded = max_rss_mb()

    start = time.perf_counter()
    for i, b in enumerate(batches):
        if stage.startswith("sft"):
            loss_sum, n = trained_nll_sum(model, b)
            loss = loss_sum / n
        else:
            chosen, rejected = dpo.concatenated_logps(model, b)
            with torch.no_grad():
                if ref_mode == "precompute":
                    ref_c, ref_r = table[i * args.dpo_batch:(i + 1) * args.dpo_batch].unbind(1)
                elif ref_mode == "copy":
                    ref_c, ref_r = dpo.concatenated_logps(ref, b)
                else:
                    with peft.disable_adapters(model):
                        ref_c, ref_r = dpo.concatenated_logps(model, b)
            loss_sum, _ = dpo.dpo_objective(chosen, rejected, ref_c, ref_r, 0.1, "sigmoid", 0.0)
            loss = loss_sum / len(chosen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loaded_mb": loaded, "peak_mb": max_rss_mb(), "s_per_step": (time.perf_counter() - start) / len(batches)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--preset", default="small", help="model preset when there is no --init checkpoint")
    p.add_argument("--init", default=str(ROOT / "out" / "sft"), help="checkpoint to start from (default out/sft)")
    p.add_argument("--sft-batch", type=int, default=16, help="packed rows per SFT step")
    p.add_argument("--dpo-batch", type=int, default=8, help="pairs per DPO step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    from minipost import checkpoint

    where = args.init if checkpoint.current_checkpoint(args.init) is not None else f"a fresh {args.preset!r} model"
    print(f"peak memory over {args.steps} steps, model: {where}\n")
    results = {}
    for name in RUNS:
        cmd = [sys.executable, __file__, "--child", name] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"run {name!r} failed:\n{proc.stderr[-2000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| run | peak RSS (MB) | training (MB) | s/step |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['loaded_mb']:.0f} | {r['s_per_step']:.2f} |")
    print()
    dpo = results["LoRA-DPO"]
    for base in ("LoRA-SFT", "LoRA-SFT, same rows as DPO"):
        ratio = dpo["peak_mb"] / results[base]["peak_mb"]
        print(f"LoRA-DPO / {base}: {ratio:.2f}x peak memory (goal <= 1.2x: {'ok' if ratio <= 1.2 else 'ABOVE'})")


if __name__ == "__main__":
    main()
