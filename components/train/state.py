"""The resumable part of a training run that is not tensors: position in the data, early stopping, totals."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "state.json"


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    world_size: int = 1
    per_device_batch: int = 0
    best_val_loss: float | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    mlflow_run_id: str | None = None
    real_tokens: int = 0
    padded_tokens: int = 0
    target_tokens: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    resumes: int = 0
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped on overflowing gradients
    losses: list[float] = field(default_factory=list)
    val_losses: list[list[float]] = field(default_factory=list)  # [step, loss] pairs

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        path = folder / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise RuntimeError(f"{path}: unreadable training state ({err})") from err
