"""The compile options only Azure ML reads, declared once: the dataclass the compiler reads, and its flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base import Setting

DEFAULT_AZUREML_COMPUTE = "cpu-cluster"


@dataclass(frozen=True)
class AzureMLOptions:
    compute: str = DEFAULT_AZUREML_COMPUTE  # for steps without an azureml compute profile


COMPILE_SETTINGS = (
    Setting("compute", ("--azureml-compute",), "Azure ML compute for steps without an azureml compute profile "
            f"(default: {DEFAULT_AZUREML_COMPUTE})"),
)


def azureml_options(values: dict[str, Any]) -> AzureMLOptions:
    return AzureMLOptions(**{name: value for name, value in values.items() if value})
