# The prepared GPU check of the training path (included by the main Makefile).
# Run as: make gpu-smoke            (a GPU machine; at most 8 minutes on one GPU -> bench/results/gpu-smoke.json)
#         make gpu-smoke-dry        (any machine: the same stages on a tiny model, CPU included)
#         make gpu-smoke-wheels     (here, with network: the wheels a bare GPU machine lacks -> build/gpu-smoke-wheels)
#         make gpu-smoke-stack      (here: the dry run and the train path's tests under a GPU machine's older stack)
# Override example: make gpu-smoke SMOKE_PYTHON=/opt/conda/bin/python SMOKE_ARGS="--lora-steps 30"
# A GPU machine usually has its own Python with torch, transformers, peft and accelerate preinstalled and no
# project venv: SMOKE_PYTHON defaults to the venv's interpreter when there is one, else python3. On a machine with
# no network, carry build/gpu-smoke-wheels and install them beside that stack first:
#   python3 -m pip install --no-index --no-deps --target /tmp/site build/gpu-smoke-wheels/*.whl
#   PYTHONPATH=/tmp/site make gpu-smoke
# A PYTHONPATH given this way is kept: the targets put the checkout in front of it.

SMOKE_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
SMOKE_ARGS ?=
SMOKE_PYTHONPATH = $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
GPU_WHEELS := build/gpu-smoke-wheels
# The GPU machine's Python; its wheels (pydantic_core) are built per Python version.
GPU_PYTHON_VERSION := 3.12
GPU_STACK_PYTHON ?= python$(GPU_PYTHON_VERSION)
GPU_STACK_VENV := .tuneline/gpu-stack-venv
GPU_STACK_SITE := build/gpu-smoke-site
# The train path's own tests that need no MLflow, run under that stack after the dry run.
GPU_STACK_TESTS := tests/llm/ml/test_chat_templates.py tests/llm/ml/test_attention.py tests/llm/ml/test_generate.py \
  tests/llm/ml/test_device.py tests/components/test_train_modelsetup.py tests/components/test_train_parallel.py \
  tests/components/test_train_precision.py
GPU_STACK_CARRIED_PTH = $$($(GPU_STACK_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/carried.pth

.PHONY: gpu-smoke gpu-smoke-dry gpu-smoke-wheels gpu-smoke-stack

gpu-smoke: ## bf16 LoRA + full steps on a ~1B Llama, MFU, FSDP, kill-and-resume on one GPU -> bench/results/gpu-smoke.json
	PYTHONPATH=$(SMOKE_PYTHONPATH) $(SMOKE_PYTHON) bench/gpu_smoke.py $(SMOKE_ARGS)

gpu-smoke-dry: ## the GPU smoke stages on a tiny model, on any machine (what the test suite runs)
	PYTHONPATH=$(SMOKE_PYTHONPATH) $(SMOKE_PYTHON) bench/gpu_smoke.py --dry-run $(SMOKE_ARGS)

gpu-smoke-wheels: $(VENV_STAMP) ## download the wheels a GPU machine with a preinstalled ML stack lacks (bench/gpu_carry.txt)
	rm -rf $(GPU_WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -c environments/constraints.txt -d $(GPU_WHEELS) -r bench/gpu_carry.txt
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)

gpu-smoke-stack: gpu-smoke-wheels ## the dry run under bench/gpu_stack.txt's versions, with only the carried wheels added
	test -x $(GPU_STACK_VENV)/bin/python || $(GPU_STACK_PYTHON) -m venv $(GPU_STACK_VENV)
	rm -f $(GPU_STACK_CARRIED_PTH)
	$(GPU_STACK_VENV)/bin/python -m pip install -q -r bench/gpu_stack.txt pytest pytest-timeout
	@# What the wheels carry comes from them alone (a newer typer, transformers' CLI, pulls pydantic in here).
	$(GPU_STACK_VENV)/bin/python -m pip uninstall -q -y -r bench/gpu_carry.txt
	! $(GPU_STACK_VENV)/bin/python -c "import pydantic" 2>/dev/null
	rm -rf $(GPU_STACK_SITE)
	$(GPU_STACK_VENV)/bin/python -m pip install -q --no-index --no-deps --target $(GPU_STACK_SITE) $(GPU_WHEELS)/*.whl
	PYTHONPATH=$(CURDIR)/$(GPU_STACK_SITE) $(MAKE) --no-print-directory gpu-smoke-dry \
	  SMOKE_PYTHON=$(GPU_STACK_VENV)/bin/python SMOKE_ARGS="--out bench/results/gpu-smoke-dry-run-gpu-stack.json $(SMOKE_ARGS)"
	@# The tests start processes of their own with a PYTHONPATH of the checkout: the carried wheels go in a .pth.
	echo $(CURDIR)/$(GPU_STACK_SITE) > $(GPU_STACK_CARRIED_PTH)
	$(GPU_STACK_VENV)/bin/python -m pytest -q -p no:cacheprovider $(GPU_STACK_TESTS); status=$$?; \
	  rm -f $(GPU_STACK_CARRIED_PTH); exit $$status
