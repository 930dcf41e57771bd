"""The serve venv's build refuses a disk without room for it before it starts, with the figures."""

import pytest

from tuneline.serving import env


def test_enough_room_is_no_problem(tmp_path):
    assert env.space_problem(tmp_path, env.BUILD_SPACE_BYTES) is None


def test_too_little_room_names_the_folder_and_both_figures(tmp_path):
    problem = env.space_problem(tmp_path, 300 * 1024**2)
    assert problem is not None
    assert str(tmp_path) in problem and "5.0 GB" in problem and "0.3 GB" in problem
    assert "TUNELINE_SERVE_VENV" in problem


def test_the_build_stops_before_creating_anything_on_a_disk_too_small(tmp_path, monkeypatch):
    # more than any disk holds: this disk's real free space is then too little
    monkeypatch.setattr(env, "BUILD_SPACE_BYTES", 1024**6)
    venv_dir = tmp_path / "serve-venv"
    with pytest.raises(env.ServeEnvError, match="needs about"):
        env.ensure_serve_venv(venv_dir)
    assert not venv_dir.exists()
