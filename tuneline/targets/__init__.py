"""Compile a pipeline graph to Kubeflow Pipelines v2 and Azure ML, and submit what was compiled.

Run as: tuneline compile pipelines/finetune.yaml --target all --out build/
"""

from __future__ import annotations

# File names in a compiled output folder, shared by the compilers and `tuneline submit`.
PIPELINE_FILE = "pipeline.yaml"  # the KFP package
RECURRING_RUN_FILE = "recurring_run.json"


class CompileError(Exception):
    """The graph cannot be expressed on the target platform; the message says which step and why."""
