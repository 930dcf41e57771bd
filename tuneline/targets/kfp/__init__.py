"""Kubeflow Pipelines v2: the compiler (compiler), the multi-node launcher a compiled step runs (launch, jobpod,
trainjob, pytorchjob, watch), submission (submit) and the target object the rest of tuneline uses (target)."""
