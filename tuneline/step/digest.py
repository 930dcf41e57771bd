"""Content digests of files and folders, for cache keys and lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path

_SKIP = {"__pycache__", ".pytest_cache"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not _SKIP.intersection(p.relative_to(folder).parts) and p.suffix != ".pyc")


def path_sha256(path: Path, known: dict[Path, str] | None = None) -> str:
    """sha256 of a file, or of a folder's relative paths and file digests (so renames change it too).

    ``known``: file digests already computed (a reader that hashed the files as it read them), so a folder is
    not read twice; every other file is hashed here."""
    known = known or {}
    if path.is_file():
        return known.get(path) or file_sha256(path)
    digest = hashlib.sha256()
    for file in tree_files(path):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(b"\0")
        digest.update((known.get(file) or file_sha256(file)).encode())
        digest.update(b"\n")
    return digest.hexdigest()
