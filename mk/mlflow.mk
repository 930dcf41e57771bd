# Browse the tracking store and model registry (included by the main Makefile, which defines PY and VENV_STAMP).
# Run as: make mlflow-ui                      then open http://127.0.0.1:5000
# Override example: make mlflow-ui MLFLOW_PORT=5050 TUNELINE_HOME=/data/tuneline

MLFLOW_PORT ?= 5000
# The same default store the local runner and the components use: SQLite, artifacts under TUNELINE_HOME.
MLFLOW_DB = $(abspath $(TUNELINE_HOME))/mlflow.db
MLFLOW_ARTIFACTS = $(abspath $(TUNELINE_HOME))/mlartifacts

.PHONY: mlflow-ui

mlflow-ui: $(VENV_STAMP) ## MLflow UI on 127.0.0.1 over .tuneline/ (runs, metric plots, registry); Ctrl-C stops it
	@mkdir -p $(MLFLOW_ARTIFACTS)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (store sqlite:///$(MLFLOW_DB))"
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(MLFLOW_DB) --artifacts-destination $(MLFLOW_ARTIFACTS) \
		--default-artifact-root file://$(MLFLOW_ARTIFACTS) --workers 1
