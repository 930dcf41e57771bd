"""Content-addressed step cache.

The key covers everything that can change a step's result: the component's code and spec, the shared helper
code components import from tuneline, the resolved input values and the digests of input artifacts. Entries
are written to a temporary folder and renamed into place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import path_sha256
from .imports import imported_modules, module_files

CACHE_FORMAT = 1
SUMMARY = "summary.md"  # what a step wants shown at the end of a run ($TUNELINE_STEP_SUMMARY)
PACKAGE = Path(__file__).resolve().parent.parent


def shared_code(component_folder: Path, root: Path | None = None) -> list[Path]:
    """The modules outside the component's folder that its code imports, followed transitively.

    Components reuse helpers from the SDK (chat formatting, PII redaction); a change there must invalidate
    their cached results, while an unrelated SDK change (the runner, a compiler) must not. `root` is the
    project root the component's imports resolve against (default: the folder above `components/`).
    """
    component_folder = component_folder.resolve()
    root = (root or component_folder.parents[1]).resolve()
    own = set(component_folder.rglob("*.py"))
    seen: set[Path] = set()
    frontier = sorted(own)
    while frontier:
        source = frontier.pop()
        base = PACKAGE.parent if source.is_relative_to(PACKAGE) else root
        for dotted in imported_modules(source, base):
            where = PACKAGE.parent if dotted.split(".")[0] == PACKAGE.name else root
            for path in module_files(dotted, where):
                path = path.resolve()
                if path not in seen and path not in own:
                    seen.add(path)
                    frontier.append(path)
    return sorted(seen)


def _shared_code_digest(component_folder: Path) -> str:
    digest = hashlib.sha256()
    root = component_folder.resolve().parents[1]
    for path in shared_code(component_folder):
        name = next((path.relative_to(b) for b in (PACKAGE.parent, root) if path.is_relative_to(b)), path)
        digest.update(name.as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def step_cache_key(component_folder: Path, component_spec: dict[str, Any], inputs: dict[str, Any]) -> str:
    """`inputs` maps each input to a JSON-able value; artifacts must already be replaced by their digest."""
    material = {
        "format": CACHE_FORMAT,
        "component_code": path_sha256(component_folder),
        "component_spec": component_spec,
        "shared_code": _shared_code_digest(component_folder),
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def link_tree(source: Path, target: Path) -> None:
    """Copy a file or folder by hard links where the filesystem allows, else by copying."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(source), str(target))


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


@dataclass
class CacheEntry:
    key: str
    folder: Path
    outputs: dict[str, Any]     # name -> {"type", "value"} or {"type", "file": relative path, "sha256"}


class StepCache:
    def __init__(self, folder: Path):
        self.folder = folder

    def lookup(self, key: str) -> CacheEntry | None:
        entry_dir = self.folder / key
        meta = entry_dir / "entry.json"
        if not meta.is_file():
            return None
        outputs = json.loads(meta.read_text())["outputs"]
        for out in outputs.values():
            if "file" in out and not (entry_dir / out["file"]).exists():
                return None  # pruned by hand: treat as a miss rather than hand a step a missing input
        return CacheEntry(key=key, folder=entry_dir, outputs=outputs)

    def store(self, key: str, step_dir: Path, outputs: dict[str, Any], meta: dict[str, Any]) -> None:
        """Keep a step's `outputs/` folder and its `summary.md` (when written) under `key`."""
        final = self.folder / key
        if final.exists():
            return
        staging = self.folder / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        link_tree(step_dir / "outputs", staging / "outputs")
        if (step_dir / SUMMARY).is_file():
            link_tree(step_dir / SUMMARY, staging / SUMMARY)
        (staging / "entry.json").write_text(json.dumps({"outputs": outputs, **meta}, indent=2))
        try:
            os.rename(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another run stored the same key first
