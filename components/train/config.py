"""The training configuration: a typed object generated from `component.yaml`, the one declaration of it."""

from __future__ import annotations

from typing import Any

from tuneline.component_args import component_program

PROGRAM = component_program(__file__)
TrainConfig = PROGRAM.args_type

# Inputs that say where a run is recorded rather than how the model is trained.
_NOT_HYPERPARAMETERS = {"experiment"}


def hyperparameters(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.parameters().items() if k not in _NOT_HYPERPARAMETERS}


def parse_args(argv: list[str] | None = None) -> Any:
    return PROGRAM.parse(argv)
