# Operating a pipeline over time: retraining checks and cost estimates (included by the main Makefile).
# Run as: make retrain-check                   (PIPELINE=pipelines/finetune.yaml by default)
# Override example: make retrain-check PIPELINE=pipelines/finetune.yaml CHECK_ARGS=--json

CHECK_ARGS ?=
COST_TARGET ?= azureml

.PHONY: retrain-check cost

retrain-check: $(VENV_STAMP) ## evaluate the pipeline's triggers; run it when one fires (exit 0 either way)
	$(PY) -m tuneline trigger check $(PIPELINE) --run --exit-zero $(CHECK_ARGS)

cost: $(VENV_STAMP) ## estimate training time and money per SKU (COST_TARGET=aks|azureml|local)
	$(PY) -m tuneline cost $(PIPELINE) --target $(COST_TARGET) $(COST_ARGS)
