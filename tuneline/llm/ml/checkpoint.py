"""Spot-safe checkpoint folders: atomic publication, discovery of the newest complete one, pruning.

A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed to ``checkpoint-<step>`` (8 digits)
only when every file is on disk, so a process killed mid-write leaves no folder that looks complete.
Stale temporary folders are removed on the next write.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^checkpoint-(\d{8})$")
TMP_PREFIX = ".tmp-checkpoint-"


def name_for(step: int) -> str:
    return f"checkpoint-{step:08d}"


def complete_checkpoints(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(folder: Path | str) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint folder")
    return int(match.group(1))


def tmp_dir(folder: Path | str, step: int) -> Path:
    return Path(folder) / f"{TMP_PREFIX}{step:08d}"


def begin(folder: Path | str, step: int) -> Path:
    """Create an empty temporary folder for ``step`` (main process only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_dir(folder, step)
    tmp.mkdir()
    return tmp


def publish(folder: Path | str, step: int, keep_last: int) -> Path:
    """Rename the finished temporary folder into place and prune old checkpoints (main process only)."""
    folder = Path(folder)
    final = folder / name_for(step)
    if final.exists():  # the same step saved twice (periodic save, then SIGTERM before the next step)
        shutil.rmtree(final)
    tmp = tmp_dir(folder, step)
    _fsync_tree(tmp)
    os.rename(tmp, final)
    if keep_last > 0:
        for old in complete_checkpoints(folder)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with file.open("rb") as fh:
                os.fsync(fh.fileno())


def load_tensors(path: Path | str, device) -> object:
    """``torch.load`` of a checkpoint file with its tensors placed on ``device`` (this rank's own), whatever
    device they were saved from."""
    return torch.load(path, map_location=device, weights_only=False)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
