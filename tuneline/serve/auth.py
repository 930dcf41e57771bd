"""The serving bearer token: generated once, kept in a mode-0600 file, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from pathlib import Path

TOKEN_FILE = "token"


def token_path(state_dir: Path) -> Path:
    return Path(state_dir) / TOKEN_FILE


def ensure_token(state_dir: Path, *, announce: bool = True) -> str:
    """Return the token in `state_dir`, creating it (printed once, to stderr) if there is none."""
    path = token_path(state_dir)
    if path.is_file():
        return load_token(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL + mode at creation: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    if announce:
        print(f"serving token (stored in {path}, shown once): {token}", file=sys.stderr)
    return token


def load_token(path: Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path}: token file is empty")
    return token


def check_bearer(header_value: str | None, token: str) -> bool:
    """True when `header_value` is exactly `Bearer <token>`; the comparison does not leak timing."""
    if not header_value:
        return False
    scheme, _, given = header_value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
