"""Checkpoint stores of `resume: true` outputs in local runs: one stable folder per step cache key.

A run's outputs live in its own folder (`runs/<run id>/steps/<step>/outputs/`), so checkpoints written there by an
interrupted attempt would be invisible to the next run. A `resume: true` output is therefore given
`<home>/checkpoints/<cache key>/<output>/` instead: the next run whose step has the same cache key (same
component code and spec, same inputs) hands the step the same folder and the step resumes from it.

Policy (docs/components.md, "Resumable outputs"):
- success: the store is moved into the run's outputs (one rename, same file system), so it becomes the step's
  output and cache entry like any other, and nothing is left under `checkpoints/`;
- failure or interrupt: the store stays for the next run with the same key;
- `--no-cache`: a store left by an earlier attempt is discarded first (nothing is reused).
A lock file beside each store keeps two concurrent runs with the same key from writing into one store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

STORES_FOLDER = "checkpoints"


class StoreBusy(Exception):
    """Another process holds the store's lock."""


@dataclass
class ResumeStore:
    output: str
    path: Path
    entries_at_start: list[str]
    _lock: IO[str]

    def adopt_into(self, target: Path) -> None:
        """Make the store the step's output folder `target` (after a successful attempt)."""
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path, target)
        except OSError:  # another file system (a TUNELINE_HOME elsewhere): copy, then remove
            shutil.copytree(self.path, target, symlinks=True)
            shutil.rmtree(self.path)
        parent = self.path.parent
        if parent.is_dir() and not any(p for p in parent.iterdir() if not p.name.endswith(".lock")):
            shutil.rmtree(parent, ignore_errors=True)

    def release(self) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        finally:
            self._lock.close()


def store_folder(home: Path, cache_key: str) -> Path:
    return home / STORES_FOLDER / cache_key


def open_stores(home: Path, cache_key: str, outputs: list[str], fresh: bool) -> list[ResumeStore]:
    """Lock and create (or find) the store of each output; `fresh` discards what an earlier attempt left."""
    folder = store_folder(home, cache_key)
    folder.mkdir(parents=True, exist_ok=True)
    stores: list[ResumeStore] = []
    try:
        for name in outputs:
            lock = (folder / f"{name}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise StoreBusy(f"checkpoint store {folder / name} is in use by another run with the same "
                                f"cache key") from None
            path = folder / name
            if fresh and path.exists():
                shutil.rmtree(path)
            path.mkdir(exist_ok=True)
            stores.append(ResumeStore(name, path, sorted(p.name for p in path.iterdir()), lock))
    except BaseException:
        for store in stores:
            store.release()
        raise
    return stores
