"""An exported run (sft --peft lora on a tiny HF model, then --stage export --format hf and
--format peft) loads in transformers and PEFT with minipost's logits."""
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from minipost import cli  # noqa: E402
from minipost.stages.common import load_stage_model  # noqa: E402
from tests.interop.common import TEXTS  # noqa: E402
from tests.tiny_models import make_hf_dir  # noqa: E402

pytestmark = pytest.mark.interop
TINY = ["--steps", "2", "--batch-size", "2", "--max-eval", "2", "--log-every", "1", "--seq-len", "1024",
        "--lr", "1e-2"]


def test_exported_lora_run_loads_in_transformers_and_peft(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_hf_dir(tmp_path / "base", tie=True)
    cli.run(["--stage", "sft", "--init", "base", "--out", "run", "--peft", "lora", *TINY])
    cli.run(["--stage", "export", "--init", "run", "--out", "hf", "--format", "hf"])
    cli.run(["--stage", "export", "--init", "run", "--out", "adapter", "--format", "peft"])
    ours, tok, _ = load_stage_model(tmp_path / "run")
    x = torch.randint(0, ours.cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "adapter" / "base"),
                                                             dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = ours(x)
        assert (expected - merged(x).logits).abs().max().item() <= 1e-4
        assert (expected - adapted(x).logits).abs().max().item() <= 1e-4
        assert (expected - plain(x).logits).abs().max().item() > 1e-3  # the adapter did change the model
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in TEXTS[:6]:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
