# Compile targets (included by the top-level Makefile).
# Run as: make compile | make golden | make conformance

COMPILE_OUT ?= build
.PHONY: compile golden compile-bench conformance

# The demo pipeline with a tiny random model, as in tests/e2e: an always-true gate so every step runs.
CONFORMANCE_TINY = --set base_model=tiny-random-llama --set max_steps=3 --set max_seq_len=768 \
	--set eval_examples=4 --set "gates=tuned.perplexity > 0"

compile: $(VENV_STAMP) ## compile every pipeline in pipelines/ to KFP and Azure ML under build/
	$(PY) -m tuneline.cli.compile compile --out $(COMPILE_OUT) pipelines/*.yaml

golden: $(VENV_STAMP) ## regenerate tests/targets/compile/golden/ from every pipeline (review the diff, then commit)
	$(PY) tests/targets/compile/make_golden.py

compile-bench: $(VENV_STAMP) ## time compiling the default pipeline to both targets -> bench/results/compile.json
	$(PY) bench/compile_bench.py

# The feedback loop improves and judges the champion the fine-tuning pipeline registered, so each run's registry
# gets one first (--seed: the demo pipeline, tiny, run into each store alike; on azureml as the workspace's jobs,
# whose register step registers the champion from its output); the feedback is 16 pairs a demo round exported
# (tests/fixtures/preference/README.md). An always-true gate, so every step runs; 10 examples, the fewest a win
# rate is computed on.
CONFORMANCE_FEEDBACK = --set base_model=tiny-random-llama --set feedback=tests/fixtures/preference/feedback_pairs.jsonl \
	--set preference_steps=2 --set max_seq_len=768 --set eval_examples=10 --set "gates=win_rate.n > 0" \
	--seed pipelines/finetune.yaml $(patsubst --set,--seed-set,$(CONFORMANCE_TINY))

# Preemption: train checkpoints every 10 steps (save_steps), so 16 steps leave a checkpoint to resume from; the
# step is killed after it and run again, and must resume (tools/conformance/azureml.py R8, kfp_resume.py).
CONFORMANCE_PREEMPT = --set max_steps=16

# kfp: the compiled package executed by kfp.local in containers of the images `make images` builds (reused when
# unchanged), through a podman service the harness starts under $(TUNELINE_HOME)/podman and stops afterwards
# (tools/conformance/podman.py installs podman and runc with apt-get when they are missing). azureml: each node a
# job in a container of the same images, through a podman service under the work folder (tools/conformance/azureml.py),
# and with --resubmit the job submitted again (its deterministic nodes reused, R11) and its schedule fired (R12).
conformance: $(VENV_STAMP) images ## run the compiled pipelines as kfp.local and Azure ML run them; compare every step with tuneline run
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance kfp tests/fixtures/toy/pipelines/toy.yaml
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance kfp pipelines/finetune.yaml $(CONFORMANCE_TINY)
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance kfp pipelines/feedback.yaml $(CONFORMANCE_FEEDBACK)
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance azureml tests/fixtures/toy/pipelines/toy.yaml
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance azureml tests/fixtures/toy/pipelines/resume.yaml --preempt-resumable
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance azureml tests/fixtures/toy/pipelines/reuse.yaml --resubmit
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance azureml pipelines/finetune.yaml $(CONFORMANCE_TINY) \
		$(CONFORMANCE_PREEMPT) --preempt-resumable
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance azureml pipelines/feedback.yaml $(CONFORMANCE_FEEDBACK)
	$(MAKE) images IMAGES=train-cpu
	OMP_NUM_THREADS=1 $(PY) -m tools.conformance.kfp_resume pipelines/finetune.yaml $(CONFORMANCE_TINY) \
		$(CONFORMANCE_PREEMPT)
