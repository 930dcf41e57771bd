"""Which VM sizes an Azure ML managed online deployment may name, and which engine each can run.

The facts (the managed-endpoint size list, each size's GPU, each GPU's compute capability, the engine's minimum)
live in azureml_sizes.yaml beside this module, each with its source. A prefix rule (`Standard_N[CDV]...` is a GPU)
was wrong both ways: it took P100 (NC v2) and V100 (NC v3, ND v2) sizes for GPUs the serve image's vLLM runs on,
which fail when the engine starts on the instance, and it passed any typo as a CPU size.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

TABLE = Path(__file__).with_name("azureml_sizes.yaml")


class SizeTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    checked: datetime.date
    engine_min_compute_capability: float
    gpus: dict[str, float]
    cpu: list[str]
    gpu: dict[str, str]

    def kind(self, instance_type: str) -> Literal["cpu", "gpu"]:
        """'cpu' or 'gpu' for a listed size the serve image runs on; ValueError naming why otherwise."""
        key = instance_type.lower()
        if key in {name.lower() for name in self.cpu}:
            return "cpu"
        gpu = {name.lower(): model for name, model in self.gpu.items()}.get(key)
        if gpu is None:
            raise ValueError(
                f"{instance_type!r} is not a managed online endpoint VM size ({self.source}, as of {self.checked}); "
                f"a size added since goes into {TABLE.name} with its GPU and source")
        capability = self.gpus[gpu]
        if capability < self.engine_min_compute_capability:
            runnable = sorted(name for name, model in self.gpu.items()
                              if self.gpus[model] >= self.engine_min_compute_capability)
            raise ValueError(
                f"{instance_type!r} carries {gpu} GPUs (compute capability {capability}); the serve image's vLLM "
                f"needs {self.engine_min_compute_capability} or more. GPU sizes it runs on: {', '.join(runnable)}")
        return "gpu"


@functools.cache
def table(path: Path = TABLE) -> SizeTable:
    sizes = SizeTable.model_validate(yaml.safe_load(path.read_text()))
    unknown = sorted(set(sizes.gpu.values()) - set(sizes.gpus))
    if unknown:
        raise ValueError(f"{path}: gpu sizes name GPUs with no compute capability under gpus: {unknown}")
    return sizes
