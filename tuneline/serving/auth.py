"""The serving bearer token: generated once, kept in a mode-0600 file, compared in constant time.

The token is never printed: whatever runs a deploy may keep its output (a pipeline runner stores each
step's log), so only the file that holds it is named. Clients read it from there.
"""

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
    """Return the token in `state_dir`, creating it if there is none (`announce`: say where it is, on stderr)."""
    path = token_path(state_dir)
    if path.is_file():
        return load_token(path)
    private_dir(path.parent)
    token = secrets.token_urlsafe(32)
    # O_EXCL + mode at creation: the token is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    if announce:
        print(f"serving token created in {path} (mode 0600; send it as 'Authorization: Bearer <token>')",
              file=sys.stderr)
    return token


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: the serving state holds the token, the engine's socket
    and request logs, which no other user of the host may read."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


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
