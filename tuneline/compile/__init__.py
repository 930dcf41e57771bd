"""Compile a pipeline graph to Kubeflow Pipelines v2 and Azure ML, and submit what was compiled.

Run as: tuneline compile pipelines/finetune.yaml --target all --out build/
"""

from __future__ import annotations


class CompileError(Exception):
    """The graph cannot be expressed on the target platform; the message says which step and why."""
