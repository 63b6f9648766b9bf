"""Rollout throughput with and without the KV cache, at the RL batch shape.

    python bench/generate.py [--init out/sft] [--rows 64] [--new-tokens 64] [--device cpu]

Without a cache every decoding step re-runs the model on the whole sequence so far
(O(T^2) work for T tokens); with it each step runs one new token per row against the
stored keys and values (O(T)). The batch is what one GRPO step samples by default:
8 RL prompts x 8 completions = 64 rows, 64 new tokens each, sampled at temperature 1.

The model is --init (default: out/sft, else out/pretrain), or a fresh model of --preset
with the project's tokenizer when there is no checkpoint: speed does not depend on the
weights. No stop token is used, so both runs produce exactly rows x new-tokens tokens.
Prints a markdown table and the speed-up (the goal is >= 3x).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minipost import data as datasets  # noqa: E402
from minipost.checkpoint import current_checkpoint  # noqa: E402
from minipost.chat import generation_prompt  # noqa: E402
from minipost.config import preset  # noqa: E402
from minipost.generate import generate  # noqa: E402
from minipost.model import GPT  # noqa: E402
from minipost.tokenizer import Tokenizer  # noqa: E402


def load(args):
    for d in ([args.init] if args.init else [Path("out/sft"), Path("out/pretrain")]):
        if current_checkpoint(d) is not None:  # a run (its current unit) or an earlier run's directory
            from minipost.stages.common import load_stage_model

            model, tok, _ = load_stage_model(d, args.device)
            return model, tok, str(d)
    tok = Tokenizer(Path("out/tokenizer/tokenizer.model"))
    torch.manual_seed(0)
    return GPT(preset(args.preset, tok.vocab_size)).to(args.device), tok, f"fresh {args.preset} preset"


def timed(model, prompts, args, use_cache: bool) -> tuple[float, torch.Tensor]:
    g = torch.Generator(device=args.device).manual_seed(0)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, prompts, args.new_tokens, stop_ids=(), pad_id=0, temperature=1.0, generator=g,
                   use_cache=use_cache)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out.tokens


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", type=Path, default=None)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rows", type=int, default=64, help="prompts x group size")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok, source = load(args)
    model.eval()
    records = datasets.read_rl(datasets.builtin("rl_train"))
    n_prompts = max(1, args.rows // args.group_size)
    prompts = [generation_prompt(r["prompt"], tok) for r in records[:n_prompts] for _ in range(args.group_size)]
    prompts = prompts[: args.rows]
    mean_prompt = sum(map(len, prompts)) / len(prompts)

    timed(model, prompts[:2], args, True)  # warm-up: first-call allocations
    t_cache, tok_cache = timed(model, prompts, args, True)
    t_plain, tok_plain = timed(model, prompts, args, False)
    n = len(prompts) * args.new_tokens
    same = torch.equal(tok_cache, tok_plain)

    print(f"model: {source} ({model.num_parameters() / 1e6:.2f}M parameters), device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"batch: {len(prompts)} rows ({n_prompts} prompts x {args.group_size}), prompts {mean_prompt:.0f} tokens "
          f"on average, {args.new_tokens} new tokens per row\n")
    print("| generate | time (s) | tokens/s |")
    print("|---|---:|---:|")
    print(f"| KV cache | {t_cache:.2f} | {n / t_cache:,.0f} |")
    print(f"| no cache | {t_plain:.2f} | {n / t_plain:,.0f} |")
    print(f"\nspeed-up with the cache: {t_plain / t_cache:.1f}x (goal >= 3x); same samples both ways: {same}")


if __name__ == "__main__":
    main()
