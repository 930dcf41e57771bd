"""Which container image each step runs: `<registry>/<environment>:<tag>`, set once per pipeline.

KFP caches a step on its image string, so a mutable tag (`latest`) gives stale cache hits after a rebuild;
`production` refuses it, and a missing tag, and an environment with no `environments/<name>/` folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..spec.models import Images
from . import CompileError

DEFAULT_REGISTRY = "tuneline"
DEFAULT_TAG = "latest"
MUTABLE_TAGS = frozenset({"latest", "main", "master", "dev", "develop", "stable", "edge", "nightly", "head"})
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImagePlan:
    registry: str
    tag: str

    @property
    def is_digest(self) -> bool:
        return bool(_DIGEST.match(self.tag))

    @property
    def mutable(self) -> bool:
        return not self.is_digest and self.tag.lower() in MUTABLE_TAGS

    def image(self, environment: str) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.registry}/{environment}{separator}{self.tag}"


def resolve_images(spec_images: Images | None, registry: str | None = None, tag: str | None = None,
                   production: bool = False) -> ImagePlan:
    """Command-line values win over the pipeline's `images:`; `production` refuses anything mutable."""
    chosen_registry = registry or (spec_images.registry if spec_images else None)
    chosen_tag = tag or (spec_images.tag if spec_images else None)
    if production:
        if not chosen_registry:
            raise CompileError("--production needs an image registry (pipeline `images.registry` or "
                               "--image-registry)")
        if not chosen_tag:
            raise CompileError("--production needs an immutable image tag or sha256 digest (pipeline "
                               "`images.tag` or --image-tag)")
    plan = ImagePlan(registry=(chosen_registry or DEFAULT_REGISTRY).rstrip("/"), tag=chosen_tag or DEFAULT_TAG)
    if not plan.is_digest and not _TAG.match(plan.tag):
        raise CompileError(f"image tag '{plan.tag}' is not a valid tag (letters, digits, '_', '.', '-'; "
                           f"at most 128) nor a sha256:<64 hex> digest")
    if production and plan.mutable:
        raise CompileError(f"--production refuses the mutable image tag '{plan.tag}': KFP caches steps on the "
                           f"image string, so a rebuilt '{plan.tag}' would be served stale cache hits; use a "
                           f"version or a sha256 digest")
    return plan


def check_environments(root: Path, environments: set[str]) -> None:
    """Every environment a step names must have a folder that builds its image."""
    missing = sorted(env for env in environments if not (root / "environments" / env).is_dir())
    if missing:
        raise CompileError(f"no environments/<name>/ folder for {', '.join(missing)}: its image cannot be built")
