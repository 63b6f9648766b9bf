"""Export a run for the Hugging Face ecosystem (DESIGN §12).

    python train.py --stage export --init RUN --out DIR [--format hf|peft]

hf (default): the run's weights as a transformers directory (minipost/pretrained.py
    save_hf): a LoRA run is merged into its base first. Loads with
    AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR).
peft: a LoRA run as a PEFT adapter: DIR/adapter_config.json + DIR/adapter_model.safetensors,
    with PEFT's tensor names (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight),
    and its base model as a transformers directory in DIR/base, which adapter_config.json
    names as base_model_name_or_path: PeftModel.from_pretrained(base, DIR) loads it.
    PEFT's LoRA computes the same y = W x + (alpha / r) B A x (alpha / sqrt(r) with rsLoRA).
"""
from __future__ import annotations

import sys
from pathlib import Path

from minipost import checkpoint, pretrained
from minipost.stages import common

FORMATS = ("hf", "peft")


def add_args(p, stage: str) -> None:
    p.add_argument("--format", default="hf", choices=FORMATS,
                   help="hf: a transformers model directory (LoRA merged); peft: a PEFT LoRA adapter")


def peft_adapter_config(settings: dict, base_dir: Path) -> dict:
    """adapter.json's LoRA settings -> PEFT's adapter_config.json."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings["r"], "lora_alpha": settings["alpha"],
            "lora_dropout": settings.get("dropout", 0.0), "target_modules": list(settings["targets"]),
            "use_rslora": bool(settings.get("rslora", False)), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "base_model_name_or_path": str(base_dir.resolve())}


def peft_tensor_name(name: str) -> str:
    """layers.0.attn.q_proj.lora_A -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"""
    return f"base_model.model.{pretrained.hf_name(name)}.weight"


def export_peft(run: Path, out: Path) -> None:
    unit = checkpoint.checkpoint_dir(run)  # the run's current checkpoint (or an earlier run's directory)
    info = checkpoint.read_json(unit / "config.json")
    if not (unit / "adapter.safetensors").is_file():
        raise SystemExit(f"train.py: error: {run} is not an adapter run (no adapter.safetensors); "
                         f"export it with --format hf")
    meta = checkpoint.read_json(unit / "adapter.json")
    if meta.get("method") != "lora":
        raise SystemExit(f"train.py: error: {unit / 'adapter.json'}: method {meta.get('method')!r}; --format peft "
                         f"exports LoRA runs (export others with --format hf)")
    base_model, tok, _ = common.load_stage_model(info["base"])
    pretrained.save_hf(base_model, tok, out / "base")
    tensors = checkpoint.load_tensors(unit / "adapter.safetensors")
    checkpoint.save_tensors({peft_tensor_name(k): v for k, v in tensors.items()}, out / "adapter_model.safetensors",
                            metadata={"format": "pt"})
    checkpoint.write_json(peft_adapter_config(meta["settings"], out / "base"), out / "adapter_config.json")


def run(args) -> dict:
    if args.init is None:
        raise SystemExit("train.py: error: --stage export needs --init RUN (the run to export)")
    run_dir, out = Path(args.init), Path(args.out)
    if args.format == "peft":
        export_peft(run_dir, out)
    else:
        model, tok, _ = common.load_stage_model(run_dir)  # merges a LoRA run into its base
        pretrained.save_hf(model.eval(), tok, out)
    print(f"[export] wrote {out} ({args.format})", file=sys.stderr)
    return {"format": args.format, "out": str(out)}
