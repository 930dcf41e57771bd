"""Deployment targets beyond the local Triton server: manifests for KServe on AKS and Azure ML managed online
endpoints, and the rollout policy (blue/green or canary) they share.

- `policy`: `RolloutPolicy` (strategy, canary percent) and the traffic split it implies.
- `kserve`: an InferenceService (serving.kserve.io/v1beta1) for a Triton model repository, validated offline
  against `kserve_schema` (the CRD fields we emit) and core kinds against Kubernetes' schemas (strict).
- `azureml`: managed online endpoint + blue/green deployment YAML, loadable by azure-ai-ml: the serve image's
  Triton runtime on the model repository, as a custom container.
"""
