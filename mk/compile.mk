# Compile targets (included by the top-level Makefile).
# Run as: make compile | make golden

COMPILE_OUT ?= build
.PHONY: compile golden compile-bench

compile: $(VENV_STAMP) ## compile every pipeline in pipelines/ to KFP and Azure ML under build/
	$(PY) -m tuneline.compile.cli compile --out $(COMPILE_OUT) pipelines/*.yaml

golden: $(VENV_STAMP) ## regenerate tests/compile/golden/ from every pipeline (review the diff, then commit)
	$(PY) tests/compile/make_golden.py

compile-bench: $(VENV_STAMP) ## time compiling the default pipeline to both targets -> bench/results/compile.json
	$(PY) bench/compile_bench.py
