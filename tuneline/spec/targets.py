"""The names of the places a pipeline compiles for: the folders under tuneline/targets/ that hold a target.py.

Read from the folders, not imported (the pipeline language sits below the targets), so a target added as a
folder is a name `target_defaults` and `enum_per_target` accept without an edit here. A target registered at run
time from elsewhere (tuneline.targets.registry.register) compiles pipelines too, but a pipeline file cannot give
it per-target defaults.
"""

from __future__ import annotations

from pathlib import Path

TARGETS_FOLDER = Path(__file__).resolve().parents[1] / "targets"
TARGET_MODULE = "target.py"
# The target that is this machine: `tuneline run` sees the values a pipeline declares for it.
LOCAL_TARGET = "local"


def compile_targets() -> tuple[str, ...]:
    """The shipped targets' names, in a fixed order."""
    return tuple(sorted(path.parent.name for path in TARGETS_FOLDER.glob(f"*/{TARGET_MODULE}")))
