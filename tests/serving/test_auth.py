from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tuneline.serving.auth import check_bearer, ensure_token, token_path


def test_token_is_created_once_with_mode_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = ensure_token(tmp_path)
    assert len(token) >= 40
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    # Deploy output ends up in step logs other users may read: only the file is named, never the token.
    err = capsys.readouterr().err
    assert str(token_path(tmp_path)) in err and token not in err
    assert ensure_token(tmp_path) == token
    assert token not in capsys.readouterr().err
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer s3cret2", False),
        ("Bearer ", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        (None, False),
    ],
)
def test_check_bearer(header: str | None, ok: bool) -> None:
    assert check_bearer(header, "s3cret") is ok
