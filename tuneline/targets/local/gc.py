"""Free the state folder's disk: `tuneline runs gc [--keep N] [--dry-run]`.

Keeps the newest N run folders and every cache entry and checkpoint store one of them used; removes the rest.
A removed cache entry only means the step runs again the next time its inputs come back. Models, the MLflow
store and the serving state are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .record import list_runs
from .resume import STORES_FOLDER


@dataclass
class Collected:
    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    kept_runs: int = 0
    dry_run: bool = False

    def render(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {len(self.removed)} folder{'s' if len(self.removed) != 1 else ''} "
                f"({self.freed_bytes / 2**20:.1f} MiB); kept {self.kept_runs} run{'s' if self.kept_runs != 1 else ''}"
                " and the cache entries they use")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def collect(home: Path, keep: int, dry_run: bool = False) -> Collected:
    runs = list_runs(home / "runs")
    kept = runs[-keep:] if keep > 0 else []
    used = {step.get("cache_key") for run in kept for step in run["steps"].values()} - {None}
    doomed = [Path(run["folder"]) for run in runs[:len(runs) - len(kept)]]
    for folder in (home / "cache", home / STORES_FOLDER):
        if folder.is_dir():
            doomed += [entry for entry in sorted(folder.iterdir())
                       if entry.is_dir() and not entry.name.startswith(".") and entry.name not in used]
    result = Collected(kept_runs=len(kept), dry_run=dry_run)
    for path in doomed:
        if not path.is_dir():
            continue
        # Cache entries hold hard links to run outputs: the bytes are freed when the last link goes.
        result.freed_bytes += _size(path)
        result.removed.append(path)
        if not dry_run:
            shutil.rmtree(path)
    return result
