"""The project's images as both conformance harnesses run them: each must hold this working tree's code.

Run as (a library): check_images(engine, ["localhost/tuneline/train-cpu:dev"], repo)

An image is built from a working tree (`make images`); one built before the last change to tuneline/ or components/
would test old code and still pass. So before any step runs, each image's copy of both folders is hashed inside a
container of it, with tuneline's own digest, and compared with the working tree's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tuneline.step.digest import path_sha256

from .podman import PodmanService

IMAGE_ROOT = "/app"  # WORKDIR of every image in environments/: tuneline/ and components/ live there
TREE = ("tuneline", "components")
_PROBE = ("import sys; from pathlib import Path; from tuneline.step.digest import path_sha256; "
          "print(*(path_sha256(Path(f)) for f in sys.argv[1:]))")


class StaleImage(Exception):
    """An image is not built, or holds other code than this working tree."""


def check_images(engine: PodmanService, images: Iterable[str], repo: Path) -> None:
    want = {folder: path_sha256(repo / folder) for folder in TREE}
    for image in images:
        if not engine.has_image(image):
            raise StaleImage(f"image {image} is not built: run `make images`")
        finished = engine.run(image, ["python", "-c", _PROBE, *(f"{IMAGE_ROOT}/{f}" for f in want)])
        got = dict(zip(want, finished.logs.split(), strict=False))
        stale = [f for f in want if got.get(f) != want[f]]
        if finished.exit_code != 0 or stale:
            raise StaleImage(f"image {image} holds another {' and '.join(stale) or 'tuneline'} than this "
                             f"working tree: run `make images` ({finished.logs.strip()[-200:]})")
