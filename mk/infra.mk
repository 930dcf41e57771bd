# Cluster and image targets. Included by the main Makefile, which defines PY (the venv python) and
# VENV_STAMP (the prerequisite that builds the venv).

.PHONY: k8s-validate nodepools-dry-run envs envs-check images images-check env-check

# Render every kustomization under k8s/ with kustomize itself (`kustomize build`, else `kubectl kustomize`)
# and validate schemas + policies on its output; then compile what the pipelines and the retraining CronJob submit
# and check it against each overlay (`tuneline cluster check`); part of `make test`.
k8s-validate: $(VENV_STAMP) ## render + validate k8s/ with kustomize (schemas, policies, versions); pipelines fit it
	$(PY) -m tuneline.cluster.validate k8s --scan pipelines --scan config --scan docs/aks.md
	$(VENV)/bin/tuneline cluster check pipelines/*.yaml

# Print the idempotent az commands that create/update the three node pools.
nodepools-dry-run: $(VENV_STAMP) ## print the idempotent az commands for the AKS node pools
	$(PY) -m tuneline.cluster.nodepools --dry-run

# Regenerate environments/*/requirements.txt and environment.yaml (add LOCK=1 to refreeze lock.json first).
envs: $(VENV_STAMP) ## regenerate environments/*/requirements.txt + Azure ML env YAML (LOCK=1 refreezes)
	$(PY) environments/render.py $(if $(LOCK),--lock)

envs-check: $(VENV_STAMP) ## fail if a generated environments/ file is stale
	$(PY) environments/render.py --check

# Build every CPU-buildable image with docker, podman or buildah (installed via apt-get when missing).
# IMAGES="control" builds a subset.
images: $(VENV_STAMP) ## build the CPU images (docker, podman or buildah; IMAGES="control" for a subset)
	PYTHON=$(PY) environments/build.sh $(IMAGES)

# Run prepare inside the train-cpu image and outside it; outputs must be identical. Not part of `make test`.
images-check: $(VENV_STAMP) ## run prepare inside the train-cpu image and outside; outputs must match
	PYTHON=$(PY) environments/images-check.sh

# Each CPU image's requirements in a throwaway venv, running its components' --help.
env-check: $(VENV_STAMP) ## install each CPU image's requirements in a throwaway venv, smoke its components
	$(PY) environments/env_check.py $(IMAGES)
