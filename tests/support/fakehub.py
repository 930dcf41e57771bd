"""A Hugging Face Hub cache laid out as huggingface_hub lays one out, for resolving a Hub id offline.

`<cache>/models--<org>--<name>/` holds `blobs/` (the files, by content hash), `snapshots/<commit>/` (one folder
per commit, its files links into blobs/) and `refs/<branch>` (the commit a branch pointed at when last seen)
(huggingface_hub file_download.py, "cache layout"). With HF_HUB_OFFLINE set, snapshot_download resolves a branch
through refs/ and a commit through snapshots/, and never calls the Hub (huggingface_hub _snapshot_download.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def add_commit(cache: Path, repo_id: str, model_dir: Path, *, message: str) -> str:
    """Cache the files of `model_dir` as a new commit of `repo_id` (its id derived from `message` and the files)
    and point `main` at it; returns the commit id."""
    repo = repo_folder(cache, repo_id)
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    digest = hashlib.sha1(message.encode())
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    move_branch(cache, repo_id, commit)
    return commit


def move_branch(cache: Path, repo_id: str, commit: str, branch: str = "main") -> None:
    refs = repo_folder(cache, repo_id) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / branch).write_text(commit)
