"""Both harnesses refuse an image that is missing or holds other code than this working tree.

Needs root, podman and the images `make images` builds (the `image_engine` fixture); skipped otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.conformance.images import StaleImage, check_images

from .conftest import IMAGES, REPO

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # needs the images test-heavy builds


def test_an_image_with_other_code_than_the_working_tree_is_refused(image_engine, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for folder in ("tuneline", "components"):
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    check_images(image_engine, IMAGES[:1], tree)  # the same files elsewhere are the same tree
    (tree / "components" / "changed.py").write_text("")
    with pytest.raises(StaleImage, match=r"holds another components than this working tree"):
        check_images(image_engine, IMAGES[:1], tree)


def test_an_image_not_built_is_named(image_engine) -> None:
    with pytest.raises(StaleImage, match=r"localhost/tuneline/absent:dev is not built"):
        check_images(image_engine, ["localhost/tuneline/absent:dev"], REPO)
