# The prepared GPU check of the training path (included by the main Makefile).
# Run as: make gpu-smoke            (a GPU machine; at most 8 minutes on one GPU -> bench/results/gpu-smoke.json)
#         make gpu-smoke-dry        (any machine: the same stages on a tiny model, CPU included)
# Override example: make gpu-smoke SMOKE_PYTHON=/opt/conda/bin/python SMOKE_ARGS="--lora-steps 30"
# A GPU machine usually has its own Python with torch, transformers, peft and accelerate preinstalled and no
# project venv: SMOKE_PYTHON defaults to the venv's interpreter when there is one, else python3.

SMOKE_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
SMOKE_ARGS ?=

.PHONY: gpu-smoke gpu-smoke-dry

gpu-smoke: ## bf16 LoRA + full steps on a ~1B Llama, MFU, FSDP, kill-and-resume on one GPU -> bench/results/gpu-smoke.json
	PYTHONPATH=$(CURDIR) $(SMOKE_PYTHON) bench/gpu_smoke.py $(SMOKE_ARGS)

gpu-smoke-dry: ## the GPU smoke stages on a tiny model, on any machine (what the test suite runs)
	PYTHONPATH=$(CURDIR) $(SMOKE_PYTHON) bench/gpu_smoke.py --dry-run $(SMOKE_ARGS)
