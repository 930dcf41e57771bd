"""Conformance: run the *compiled* pipelines the way Kubeflow Pipelines and Azure ML run them, on this machine, and
compare every step's outputs with `tuneline run` on the same inputs.

Run as: python -m tools.conformance azureml pipelines/finetune.yaml --set base_model=tiny-random-llama
        make conformance
"""
