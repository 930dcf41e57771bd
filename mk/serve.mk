# Serving targets, included by the top-level Makefile (which defines PY and VENV_STAMP).
# Run as: make serve-venv | make serve-deploy MODEL=path/to/hf-folder | make serve-status | make serve-stop
#         make engine-bench
# The serve venv holds nvidia-pytriton (bundled tritonserver) and needs numpy<2, so it is separate from .venv.

# The same defaults as tuneline/settings.py: the state follows TUNELINE_HOME, the venv stays in .tuneline/.
SERVE_VENV ?= $(or $(TUNELINE_SERVE_VENV),.tuneline/serve-venv)
SERVE_STATE ?= $(or $(TUNELINE_SERVE_STATE),$(TUNELINE_HOME)/serve)
MODEL ?=
SERVE_PORT ?= 8000

LOAD_REQUESTS ?= 1000
LOAD_CONCURRENCY ?= 32 64

.PHONY: serve-venv serve-deploy serve-status serve-stop serve-bench serve-load serve-faults

serve-venv: $(VENV_STAMP) ## build the serving venv (pytriton's Triton + vLLM's CPU engine + transformers, numpy<2); idempotent
	TUNELINE_SERVE_VENV=$(SERVE_VENV) $(PY) -m tuneline.serving.env --venv $(SERVE_VENV)

# The serving tests start a real tritonserver: `make test` builds the serve venv first.
test: serve-venv

serve-deploy: serve-venv ## blue/green deploy MODEL (HF folder or LoRA adapter) behind the auth proxy
	@test -n "$(MODEL)" || (echo "usage: make serve-deploy MODEL=path/to/model [SERVE_PORT=8000]"; exit 2)
	TUNELINE_SERVE_VENV=$(SERVE_VENV) $(PY) -m tuneline.serving --state-dir $(SERVE_STATE) \
		deploy --model-dir $(MODEL) --port $(SERVE_PORT)

serve-status: $(VENV_STAMP) ## show the local servers and the proxy
	$(PY) -m tuneline.serving --state-dir $(SERVE_STATE) status

serve-stop: $(VENV_STAMP) ## stop the servers and the proxy: no process, socket, shared memory or port left
	$(PY) -m tuneline.serving --state-dir $(SERVE_STATE) stop

serve-faults: serve-venv ## the fault-injection tier: engine killed under load, proxy restart, full disk, MLflow down
	TUNELINE_SERVE_VENV=$(SERVE_VENV) $(PY) -m pytest -q -s tests/serving/test_faults.py tests/serving/test_guard.py

serve-bench: serve-venv ## the registered demo model served vs plain transformers (c=1/8/32/64) -> bench/results/serve.json
	TUNELINE_SERVE_VENV=$(SERVE_VENV) $(PY) bench/serve_bench.py $(BENCH_ARGS)

serve-load: $(VENV_STAMP) ## LOAD_REQUESTS chat requests at each LOAD_CONCURRENCY to the running endpoint -> bench/results/serve-load.json
	$(PY) bench/serve_bench.py --state-dir $(SERVE_STATE) --requests $(LOAD_REQUESTS) --concurrency $(LOAD_CONCURRENCY)

.PHONY: feedback-demo
feedback-demo: serve-venv ## the closed loop: demo champion served, scripted users rate it, DPO challenger judged and canaried -> bench/results/feedback-demo.json
	TUNELINE_SERVE_VENV=$(SERVE_VENV) $(PY) bench/feedback_demo.py $(DEMO_ARGS)

# Not a prerequisite of `test`: the engines' venvs (vLLM's CPU build, OpenVINO GenAI) are large and built only here.
.PHONY: engine-bench
engine-bench: $(VENV_STAMP) ## serving engines on the demo's base model: transformers vs vLLM (CPU) vs OpenVINO GenAI -> bench/results/engines.json
	nice $(PY) bench/engine_bench.py $(BENCH_ARGS)
