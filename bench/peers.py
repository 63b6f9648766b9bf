"""minipost's steps side by side with transformers + TRL + PEFT on the same weights.

The same GPT weights are copied into a transformers LlamaForCausalLM (HF key mapping:
model.embed_tokens <- tok_emb, model.layers.i.self_attn.{q,k,v,o}_proj <- layers.i.attn.*,
input_layernorm <- attn_norm, post_attention_layernorm <- mlp_norm, mlp.* <- layers.i.mlp.*,
model.norm <- norm; both use rotate-half RoPE; the logits are checked equal first). Same
batch, dtype (torch.autocast bf16 on both sides, or float32) and thread count; the rows
are interleaved (minipost, peer, minipost, ...), min and median over --repeats.

What is timed on the peer side (TRL's trainers are not run; their step computations are):
  dpo:  TRL DPOTrainer's concatenated forward (one forward of chosen + rejected rows, full
        logits), trl.trainer.utils.selective_log_softmax, masked sums, the same for the
        reference (no grad; PEFT's disable_adapter() for LoRA), the sigmoid DPO loss, backward.
        A pair's rows share their first half (the prompt), which minipost runs once per pair
        (in the built-in DPO data the prompt is 85% of a pair's tokens, so this is the lesser case).
  sft:  padded: LlamaForCausalLM(input_ids, attention_mask, labels).loss + backward;
        padding-free: one packed row with restarted position_ids (TRL padding_free), loss.
  grpo: GRPOTrainer's _get_per_token_logps: forward with logits_to_keep = completion length
        + 1, selective_log_softmax, the same for the reference, clipped loss with k3 KL. The
        batch is a GRPO batch: groups of 4 rows share their prompt (4 completions of it),
        which minipost runs once per group and TRL once per row; grpo-distinct gives every
        row its own prompt (the same work on both sides).
  generate: model.generate(greedy, 32 new tokens, KV cache) vs minipost.generate.
minipost's steps are bench/steps.py. Ratio = minipost / peer time (below 1: minipost faster).

    make bench-peers     (builds .venv-peers: torch==2.13.0 first, then trl peft transformers)
    python bench/peers.py [--shape smollm2|builtin] [--precision fp32|bf16] [--repeats 7]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from steps import SMOLLM2, STEPS, batch, build  # noqa: E402

from minipost import backend  # noqa: E402
from minipost.config import preset  # noqa: E402
from minipost.generate import generate  # noqa: E402


def to_llama(model, cfg):
    """A transformers LlamaForCausalLM holding the GPT's weights (the mapping above)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.max_seq_len,
                         rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                         tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa")
    hf = LlamaForCausalLM(hf_cfg)
    names = {"tok_emb": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
    state = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "layers":
            i, _, rest = rest.partition(".")
            rest = rest.replace("attn_norm", "input_layernorm").replace("mlp_norm", "post_attention_layernorm")
            rest = rest.replace("attn.", "self_attn.")
            state[f"model.layers.{i}.{rest}"] = value
        else:
            state[f"{names[head]}.{rest}"] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m or m == "lm_head.weight" for m in missing), (missing, unexpected)
    return hf


def peer_logps(hf, ids, targets, keep=None):
    from trl.trainer.utils import selective_log_softmax

    kw = {} if keep is None else {"logits_to_keep": keep}
    logits = hf(input_ids=ids, **kw).logits.float()
    t = targets if keep is None else targets[:, -keep:]
    return selective_log_softmax(logits, t)


def peer_dpo(hf, ref, ids, targets):
    """ref: (model, context) of the reference pass: (the PEFT model, disable_adapter) for
    LoRA, (a frozen copy, nullcontext) for full training."""
    scored = targets != -100
    policy = (peer_logps(hf, ids, targets.clamp(min=0)) * scored).sum(-1)
    with torch.no_grad(), ref[1]():
        reference = (peer_logps(ref[0], ids, targets.clamp(min=0)) * scored).sum(-1)
    h = ids.shape[0] // 2
    logits = (policy[:h] - policy[h:]) - (reference[:h] - reference[h:])
    (-F.logsigmoid(0.1 * logits)).mean().backward()


def peer_sft(hf, ids, targets):
    # transformers shifts labels itself: labels[t + 1] = our targets[t].
    labels = torch.cat([torch.full_like(targets[:, :1], -100), targets[:, :-1]], 1)
    hf(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()


def peer_sft_padding_free(hf, ids, targets):
    B, T = ids.shape
    labels = torch.cat([torch.full_like(targets[:, :1], -100), targets[:, :-1]], 1)
    hf(input_ids=ids.reshape(1, B * T), position_ids=torch.arange(T).repeat(B)[None],
       labels=labels.reshape(1, B * T)).loss.backward()


def peer_grpo(hf, ref, ids, targets):
    C = ids.shape[1] // 2
    logps = peer_logps(hf, ids[:, :-1], ids[:, 1:], keep=C)
    with torch.no_grad(), ref[1]():
        ref = peer_logps(ref[0], ids[:, :-1], ids[:, 1:], keep=C)
    adv = torch.randn(ids.shape[0], generator=torch.Generator().manual_seed(0))[:, None]
    ratio = torch.exp(logps - logps.detach())
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv) + 0.04 * kl
    loss.mean().backward()


def interleaved(fns, repeats):
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2", choices=("smollm2", "builtin"))
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quicker run")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--rows", default="dpo-lora,dpo-full,sft,sft-padding-free,grpo,grpo-distinct,generate")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.precision == "bf16" and not backend.bf16_supported():
        # emulated on both sides (~35x slower than float32): it would time the emulation
        print("bf16: skipped, not native on this CPU (no AVX512-BF16 or AMX)")
        return
    torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    cfg = SMOLLM2 if args.shape == "smollm2" else preset("small", 3072)
    if args.layers:
        cfg = type(cfg)(**{**cfg.__dict__, "n_layer": args.layers})
    backend.set_precision(args.precision)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")  # noqa: E731
    print(f"{args.shape} (L={cfg.n_layer}), {args.precision}, batch {args.batch} x {args.seq}, "
          f"{args.threads} thread(s), {args.repeats} repeats\n")
    print("| step | minipost s (min / median) | peer s (min / median) | ratio (min) | ratio (median) |")
    print("|---|---|---|---|---|")
    for row in args.rows.split(","):
        peft = "lora" if row in ("dpo-lora", "sft", "sft-padding-free", "grpo", "grpo-distinct") else "none"
        model, ref = build(cfg, peft)
        base = model if peft == "none" else build(cfg, "none")[0]
        hf = to_llama(base, cfg)
        backend.set_precision("fp32")  # the mapping check runs in float32 on both sides
        with torch.no_grad():
            probe = torch.randint(0, cfg.vocab_size, (1, 16))
            assert torch.allclose(base(probe), hf(input_ids=probe).logits, atol=1e-4), "weights did not map"
        backend.set_precision(args.precision)
        if peft == "lora":
            targets_mods = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            hf = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, target_modules=targets_mods, lora_dropout=0.0))
            peer_ref = (hf, hf.disable_adapter)
        else:
            peer_ref = (to_llama(ref, cfg).requires_grad_(False), contextlib.nullcontext)
        kind = row.split("-")[0]
        rows = args.batch * (2 if kind == "dpo" else 1)
        ids, targets = batch(cfg, rows, args.seq, group_size=4 if row == "grpo" else 1, pairs=kind == "dpo")
        ours = lambda: STEPS[kind](model, ref, ids, targets)  # noqa: E731
        if row == "generate":
            model.eval(), hf.eval()
            prompts = [list(range(1, 65))] * args.batch
            ours = lambda: generate(model, prompts, 32)  # noqa: E731
            prompt_ids = torch.tensor(prompts)

            def peer():
                with torch.no_grad(), autocast():
                    hf.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=32,
                                min_new_tokens=32, do_sample=False, pad_token_id=0)
        else:
            if kind == "sft":
                one = peer_sft_padding_free if row == "sft-padding-free" else peer_sft

                def peer():
                    with autocast():
                        one(hf, ids, targets)
            else:
                def peer():
                    with autocast():
                        {"dpo": peer_dpo, "grpo": peer_grpo}[kind](hf, peer_ref, ids, targets)
        res = interleaved({"minipost": ours, "peer": peer}, args.repeats)
        (a, am), (b, bm) = res["minipost"], res["peer"]
        print(f"| {row} | {a:.3f} / {am:.3f} | {b:.3f} / {bm:.3f} | {a / b:.2f}x | {am / bm:.2f}x |", flush=True)
    backend.set_precision("fp32")


if __name__ == "__main__":
    main()
