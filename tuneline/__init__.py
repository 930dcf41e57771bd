"""tuneline: fine-tuning pipelines for LLMs as code.

One YAML DAG of containerised components runs locally (`tuneline run`), and compiles to Kubeflow Pipelines v2
and to Azure ML (`tuneline compile`).
"""

__version__ = "0.1.0"
