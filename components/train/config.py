"""The training configuration: a typed object generated from `component.yaml`, the one declaration of it."""

from __future__ import annotations

from typing import Any

from tuneline.step.args import component_program

PROGRAM = component_program(__file__)
TrainConfig = PROGRAM.args_type

# Inputs that say where a run is recorded rather than how the model is trained.
_NOT_HYPERPARAMETERS = {"experiment"}


def hyperparameters(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.parameters().items() if k not in _NOT_HYPERPARAMETERS}


def parse_args(argv: list[str] | None = None) -> Any:
    return PROGRAM.parse(argv)


# Above these a fine-tune of a multi-billion-parameter model is likely to diverge: LoRA/QLoRA recipes use 1e-4 to
# 2e-4 (the QLoRA paper, Dettmers et al. 2023, hyperparameters in its appendix: 2e-4 for 7B-13B, 1e-4 for
# 33B-65B), full fine-tuning 1e-5 to 5e-5.
HIGH_LEARNING_RATE = {"full": 1e-4, "lora": 1e-3, "qlora": 1e-3}
BILLION = 1e9
# No --learning-rate: from a billion parameters the recipes above; below, what a 135M demo model's LoRA needs to
# learn the sample data in a few dozen steps, and a full fine-tune's usual rate for small models.
DEFAULT_LEARNING_RATE = {True: {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4},
                         False: {"full": 1e-4, "lora": 2e-3, "qlora": 2e-3}}


def learning_rate(config: Any, n_parameters: int) -> float:
    """The learning rate to train with: the one given, or the default for the method and model size."""
    if config.learning_rate is not None:
        return config.learning_rate
    return DEFAULT_LEARNING_RATE[n_parameters >= BILLION][config.method]


def learning_rate_warning(config: Any, n_parameters: int) -> str | None:
    """A warning when a model of a billion parameters or more is trained with a learning rate far above what its
    method usually uses."""
    limit = HIGH_LEARNING_RATE.get(config.method)
    if limit is None or config.learning_rate is None or config.learning_rate <= limit or n_parameters < BILLION:
        return None
    return (f"--learning-rate {config.learning_rate:g} is high for method {config.method} on a "
            f"model of {n_parameters / 1e9:.1f}B parameters (above {limit:g}; left unset it is picked by method "
            "and model size): the run may diverge")
